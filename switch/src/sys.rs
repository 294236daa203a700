//! (being written) all unsafe / ioctl code of sgswitch.
#![allow(unsafe_code)]
