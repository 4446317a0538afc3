//! Links `weir-worker` with packed relative relocations (DT_RELR, glibc 2.36+, which the
//! image's Debian 12 base has): the relocation table of a position-independent binary
//! this size is about 6 MiB, all read at start-up, and packs into a few KiB. The `weir`
//! CLI, which runs on laptops with older C libraries too, is linked as usual.
fn main() {
    println!("cargo:rustc-link-arg-bin=weir-worker=-Wl,-z,pack-relative-relocs");
}
