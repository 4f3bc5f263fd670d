mod util;
fn main() {
    util::run(&[], &[])
}
