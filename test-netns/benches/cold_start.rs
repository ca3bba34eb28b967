mod common;
fn main() {
    let Some(_run) = common::gate("cold_start") else { return };
}
