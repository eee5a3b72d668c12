fn main() {
    print!("{}", cls_core::crd::crds_yaml());
}
