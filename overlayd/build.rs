//! Puts the git commit into `--version` and `overlayd_build_info`.
include!("../build-support/git_commit.rs");

fn main() {
    emit();
}
