ep_macros::ep_spec!(Missing = "no/such/spec.yaml");
ep_macros::ep_spec!(Invalid = "invalid.yaml");

fn main() {}
