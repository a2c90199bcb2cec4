// SPDX-License-Identifier: Apache-2.0 or BSD-3-Clause

fn main() {
    // VSCSI PATCH: declare the cfg (silences unexpected_cfgs as a path dependency).
    println!("cargo::rustc-check-cfg=cfg(RUSTDOC_disable_feature_compat_errors)");
    println!("cargo::rerun-if-env-changed=DOCS_RS");
    if std::env::var("DOCS_RS").is_ok() {
        println!("cargo::rustc-cfg=RUSTDOC_disable_feature_compat_errors");
    }
}
