//! Rebuild the eBPF object when the linker changes (e.g. `.tools/bin/bpf-linker`
//! reinstalled): cargo does not track it otherwise.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
