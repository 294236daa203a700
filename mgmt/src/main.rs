fn main() {
    println!("sgswitch: being written");
}
