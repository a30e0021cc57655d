//! `vsky-volume-plugin`: installed once, invoked through one symlink per
//! SMAPIv3 call (see the library docs for what each call does).

fn main() {
    std::process::exit(smapi::runner::main(&volume_plugin::PLUGIN));
}
