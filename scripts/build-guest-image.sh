#!/usr/bin/env bash
# Builds the sgswitch QEMU guest image from Debian packages only: a Debian cloud
# kernel plus a busybox initramfs whose /init does DHCP on eth0 and serves HTTP
# on :80 and an SSH-like banner on :22 (guest/README.md has the details).
#
#   scripts/build-guest-image.sh [OUTDIR]     # default OUTDIR=guest/build
#
# Outputs: OUTDIR/vmlinuz, OUTDIR/initrd.img (cpio newc, gzip), OUTDIR/busybox (the
# static busybox, handy for host-side udhcpd/nc/wget), and OUTDIR/image.env, written
# last: KEY="VALUE" lines, sourceable by sh, with absolute paths. OUTDIR also gets
# a .gitignore of "*": build outputs never belong in git.
#
# Idempotent: does nothing when image.env is newer than this script and every file
# under guest/rootfs (a newer kernel in the archive alone does not trigger a rebuild:
# use SG_GUEST_FORCE=1). Downloaded .debs are cached in OUTDIR/debs. Concurrent runs
# on one OUTDIR serialise on OUTDIR/.lock.
# Root is needed only for `apt-get update`, run only when a package is not known.
#
# Environment:
#   SG_GUEST_KERNEL_PKG  kernel package (default linux-image-cloud-amd64: small, has
#                        virtio_net; a metapackage is resolved to its linux-image-*)
#   SG_GUEST_MODULES     modules to load at boot, dependencies are added
#                        (default "virtio_pci virtio_net")
#   SG_GUEST_FORCE=1     rebuild even when the outputs look up to date
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SELF="$ROOT/scripts/build-guest-image.sh"
ROOTFS="$ROOT/guest/rootfs"
OUT=${1:-"$ROOT/guest/build"}
KERNEL_PKG=${SG_GUEST_KERNEL_PKG:-linux-image-cloud-amd64}
MODULES=${SG_GUEST_MODULES:-virtio_pci virtio_net}
APPEND="console=ttyS0 quiet panic=-1"

die() {
    echo "build-guest-image: $*" >&2
    exit 1
}
log() { echo "== $*" >&2; }

[ "$(dpkg --print-architecture 2>/dev/null)" = amd64 ] ||
    die "needs an amd64 Debian host (dpkg architecture: $(dpkg --print-architecture 2>/dev/null || echo none))"
[ -d "$ROOTFS" ] || die "missing guest files in $ROOTFS"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# Build outputs (40 MB of binaries) never belong in git, wherever OUTDIR is.
[ -f "$OUT/.gitignore" ] || echo '*' >"$OUT/.gitignore"
# Tests may call this concurrently: one builder at a time per OUTDIR.
exec 9>"$OUT/.lock"
flock 9

if [ "${SG_GUEST_FORCE:-0}" != 1 ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] &&
    [ -s "$OUT/image.env" ] && [ -z "$(find "$SELF" "$ROOTFS" -newer "$OUT/image.env" | head -n1)" ]; then
    log "guest image up to date in $OUT (SG_GUEST_FORCE=1 rebuilds)"
    exit 0
fi

# The candidate version's apt record of a package (one apt-cache call: each costs
# about a second here). Runs `apt-get update` first when apt does not know it.
pkg_record() {
    local pkg=$1 rec
    rec=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null || true)
    if [ -z "$rec" ]; then
        [ "$(id -u)" = 0 ] || die "package $pkg unknown to apt and not root to run apt-get update"
        log "apt-get update ($pkg not known)"
        apt-get update -qq || die "apt-get update failed"
        rec=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null || true)
        [ -n "$rec" ] || die "package $pkg not found in the apt sources"
    fi
    echo "$rec"
}
field() { awk -v f="$1:" '$1 == f { sub(/^[^:]*: */, ""); print; exit }'; }

# Downloads (not installs) PKG at VERSION into the cache; echoes the .deb path.
cached_deb() {
    local pkg=$1 ver=$2 f
    for f in "$OUT/debs/${pkg}"_*.deb; do
        [ -f "$f" ] && [ "$(dpkg-deb -f "$f" Version)" = "$ver" ] && echo "$f" && return 0
    done
    return 0
}
download() {
    local pkg=$1 ver=$2 deb
    deb=$(cached_deb "$pkg" "$ver")
    if [ -z "$deb" ]; then
        log "apt-get download $pkg ($ver)"
        (cd "$OUT/debs" && apt-get download -q=2 -o APT::Sandbox::User=root "$pkg=$ver") >&2 ||
            die "apt-get download $pkg=$ver failed"
        deb=$(cached_deb "$pkg" "$ver")
        [ -n "$deb" ] || die "apt-get download $pkg=$ver left no .deb in $OUT/debs"
    fi
    echo "$deb"
}

mkdir -p "$OUT/debs"
# linux-image-cloud-amd64 is a metapackage: follow its Depends to linux-image-VERSION.
kpkg=$KERNEL_PKG
krec=$(pkg_record "$kpkg")
if ! echo "$krec" | field Filename | grep -q '/linux-image-[0-9]'; then
    kpkg=$(echo "$krec" | field Depends | grep -o 'linux-image-[0-9][^ ,|]*' | head -n1 || true)
    [ -n "$kpkg" ] || die "cannot resolve kernel package $KERNEL_PKG to a linux-image-VERSION package"
    krec=$(pkg_record "$kpkg")
fi
kdeb=$(download "$kpkg" "$(echo "$krec" | field Version)")
bdeb=$(download busybox-static "$(pkg_record busybox-static | field Version)")
# The cache keeps only what this build uses (a new kernel ABI is a new package name).
for f in "$OUT/debs"/*.deb; do
    [ "$f" = "$kdeb" ] || [ "$f" = "$bdeb" ] || rm -f "$f"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sgguest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
log "unpacking $(basename "$kdeb") and $(basename "$bdeb")"
dpkg-deb -x "$kdeb" "$WORK/kernel"
dpkg-deb -x "$bdeb" "$WORK/busybox"

BB="$WORK/busybox/bin/busybox"
[ -x "$BB" ] || die "no bin/busybox in $(basename "$bdeb")"
vmlinuz=$(find "$WORK/kernel/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n1)
[ -n "$vmlinuz" ] || die "no /boot/vmlinuz-* in $(basename "$kdeb")"
KVER=${vmlinuz##*/vmlinuz-}
MODDIR="$WORK/kernel/lib/modules/$KVER"
[ -d "$MODDIR" ] || die "no /lib/modules/$KVER in $(basename "$kdeb")"

# --- initramfs tree -----------------------------------------------------------
STAGE="$WORK/root"
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root,www,lib/modules}
cp "$BB" "$STAGE/bin/busybox"
for applet in $("$BB" --list-full); do
    [ -e "$STAGE/$applet" ] || ln -s /bin/busybox "$STAGE/$applet"
done
cp -R "$ROOTFS"/. "$STAGE"/
chmod 755 "$STAGE/init" "$STAGE/etc/udhcpc.script" "$STAGE/bin/sg-ssh-banner"

# Kernel modules: the requested ones plus their dependencies (read from each
# module's .modinfo "depends=" field: the package ships no modules.dep), copied flat
# as NAME.ko, uncompressed (busybox insmod wants plain .ko), and listed in
# /etc/modules.order dependencies first. Built-in modules are skipped.
declare -A mod_seen=()
mod_order=()
mod_file() {
    local name=$1
    find "$MODDIR/kernel" \( -name "$name.ko*" -o -name "${name//_/-}.ko*" \) | head -n1
}
mod_builtin() {
    local name=$1
    [ -f "$MODDIR/modules.builtin" ] &&
        grep -qE "/(${name}|${name//_/-})\.ko\$" "$MODDIR/modules.builtin"
}
add_module() {
    local name=${1//-/_} src dst deps dep
    [ -z "${mod_seen[$name]:-}" ] || return 0
    mod_seen[$name]=1
    if mod_builtin "$name"; then
        return 0
    fi
    src=$(mod_file "$name")
    [ -n "$src" ] || die "module $name: neither built into $KVER nor found under $MODDIR/kernel"
    dst="$STAGE/lib/modules/$name.ko"
    case "$src" in
        *.ko) cp "$src" "$dst" ;;
        *.ko.xz) "$BB" xz -dc "$src" >"$dst" ;;
        *.ko.gz) "$BB" gzip -dc "$src" >"$dst" ;;
        *.ko.zst)
            command -v zstd >/dev/null || die "module $name is zstd-compressed: install zstd"
            zstd -q -dc "$src" >"$dst"
            ;;
        *) die "module $name: unknown file type $src" ;;
    esac
    deps=$(tr '\0' '\n' <"$dst" | sed -n 's/^depends=//p' | head -n1)
    for dep in ${deps//,/ }; do
        add_module "$dep"
    done
    mod_order+=("$name")
}
for m in $MODULES; do
    add_module "$m"
done
printf '%s\n' "${mod_order[@]}" >"$STAGE/etc/modules.order"
echo "$KVER" >"$STAGE/etc/guest-kernel"

# --- outputs --------------------------------------------------------------------
log "writing initrd.img (modules: ${mod_order[*]})"
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | "$BB" cpio -o -H newc -R 0:0 2>/dev/null) |
    gzip -9n >"$WORK/initrd.img"
[ -s "$WORK/initrd.img" ] || die "cpio produced an empty initramfs"
cp "$vmlinuz" "$WORK/vmlinuz"
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initrd.img" "$OUT/initrd.img"
cp "$BB" "$OUT/busybox.new" && mv -f "$OUT/busybox.new" "$OUT/busybox"

cat >"$OUT/image.env.new" <<EOF
# Written by scripts/build-guest-image.sh; boot with:
#   qemu-system-x86_64 -accel tcg -m 256 -nographic -kernel "\$SG_GUEST_KERNEL" \\
#     -initrd "\$SG_GUEST_INITRD" -append "\$SG_GUEST_APPEND" \\
#     -netdev tap,... -device virtio-net-pci,netdev=...
SG_GUEST_KERNEL="$OUT/vmlinuz"
SG_GUEST_INITRD="$OUT/initrd.img"
SG_GUEST_BUSYBOX="$OUT/busybox"
SG_GUEST_APPEND="$APPEND"
SG_GUEST_KERNEL_PKG="$(basename "$kdeb")"
SG_GUEST_BUSYBOX_PKG="$(basename "$bdeb")"
SG_GUEST_KVER="$KVER"
SG_GUEST_MODULES="${mod_order[*]}"
EOF
mv -f "$OUT/image.env.new" "$OUT/image.env"
log "guest image in $OUT: vmlinuz $(stat -c %s "$OUT/vmlinuz") bytes, initrd.img $(stat -c %s "$OUT/initrd.img") bytes"
