//! Records the git revision for `--version`.
fn main() {
    b24_buildinfo::emit_git_revision();
}
