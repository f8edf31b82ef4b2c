// A stage producing a map followed by a stage that takes a String: the seed's `dict` vs `str`
// mismatch. `Pipeline::then` refuses it at compile time.
use std::collections::HashMap;

use switchyard_pipeline::{Pipeline, Stage, StageError};

type Map = HashMap<String, String>;

struct ParseFields;
impl Stage<Vec<u8>, Map> for ParseFields {
    async fn run(&mut self, input: Vec<u8>) -> Result<Map, StageError> {
        let mut m = Map::new();
        m.insert("raw".to_owned(), String::from_utf8_lossy(&input).into_owned());
        Ok(m)
    }
}

struct Normalise;
impl Stage<String, String> for Normalise {
    async fn run(&mut self, input: String) -> Result<String, StageError> {
        Ok(input.trim().to_lowercase())
    }
}

fn main() {
    let _pipeline = Pipeline::new(ParseFields).then(Normalise);
}
