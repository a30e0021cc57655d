//! `vsky-datapath-plugin`: installed once, invoked through one symlink per
//! SMAPIv3 Datapath call (see the library docs).

fn main() {
    std::process::exit(smapi::runner::main(&datapath_plugin::PLUGIN));
}
