//! Compiles `proto/` with the pure-Rust `protox`, so a build needs no `protoc`.

fn main() {
    let protos = ["proto/tern/v1/session.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    // A failure here is a broken schema in the source tree: failing the build is the point.
    let fds = protox::compile(protos, ["proto"]).expect("schemas/proto must compile");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost must generate code for the compiled descriptors");
}
