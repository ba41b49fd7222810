//! Links the system ISA-L (`libisal`, Debian package `libisal-dev`) found through pkg-config.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    match pkg_config::Config::new()
        .atleast_version("2.25")
        .probe("libisal")
    {
        Ok(lib) => {
            for p in &lib.include_paths {
                println!("cargo:include={}", p.display());
            }
        }
        Err(e) => {
            eprintln!(
                "\nstrata-isal: ISA-L (libisal >= 2.25) was not found through pkg-config: {e}\n\
                 Install it with `sudo scripts/setup.sh` (Debian/Ubuntu: `apt-get install libisal-dev pkg-config`),\n\
                 or point PKG_CONFIG_PATH at a libisal.pc of your own ISA-L build.\n"
            );
            panic!("strata-isal: libisal not found (run scripts/setup.sh or install libisal-dev)");
        }
    }
}
