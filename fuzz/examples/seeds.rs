//! Writes the seed inputs of `decode_publish` under `fuzz/seeds/decode_publish/`: the demo story's
//! requests, length-delimited as the target reads them. Real requests, with sources and
//! attributions, start the fuzzer deep in validation instead of at the first protobuf tag.
//!
//! Run it again when the protos or the demo story change: `cd fuzz && cargo run --example seeds`.

use std::{fs, path::Path};

use prost::Message;
use storywire::demo;

fn main() -> std::io::Result<()> {
    let seed = demo::requests(demo::SEED);
    let live = demo::requests(demo::LIVE);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/decode_publish");
    fs::create_dir_all(&dir)?;
    let seeds = [
        ("story-opened", &seed[..1]),
        ("demo-seed", &seed[..]),
        (
            "demo-seed-and-live",
            &[seed.as_slice(), live.as_slice()].concat()[..],
        ),
    ];
    for (name, requests) in seeds {
        let mut bytes = Vec::new();
        for request in requests {
            request
                .encode_length_delimited(&mut bytes)
                .expect("a Vec grows as needed");
        }
        fs::write(dir.join(name), &bytes)?;
        println!("{name}: {} requests, {} bytes", requests.len(), bytes.len());
    }
    Ok(())
}
