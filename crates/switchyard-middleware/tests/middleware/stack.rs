use crate::common as _;
