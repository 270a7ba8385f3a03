//! An app embedding the extractor: load a checkpoint (and a LoRA adapter), extract fields.
//!
//! cargo run -p tiqu-examples --example embed -- tests/fixtures/tiny-untied [ADAPTER_DIR]

use std::path::PathBuf;

use burn::backend::Flex;
use tiqu_core::files::Folder;
use tiqu_core::{Checkpoint, Constrain, ExtractOptions, Files, LoadOptions, Schema};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = PathBuf::from(args.next().unwrap_or_else(|| "tests/fixtures/tiny-untied".into()));
    let adapter = args.next().map(Folder::new);

    let opts = LoadOptions { adapter: adapter.as_ref().map(|a| a as &dyn Files), ..Default::default() };
    let loaded = Checkpoint::open_dir(&model)?.load::<Flex>(&opts, &Default::default())?;
    // The schema and options are fixed when the extractor is built: prompt, grammar and
    // vocabulary table always agree.
    let options = ExtractOptions { constrain: Constrain::Copy, max_new_tokens: 128, batch: 16, ..Default::default() };
    let extractor = loaded.into_extractor(Schema::default(), options)?; // name, address, email, question

    let complaints = [
        "龙琳，宁夏回族自治区璐市城东林街g座 955491，邮箱 nafan@example.com。小区垃圾堆积成山，物业不管。",
        "王小明，上海市浦东新区世纪大道100号，xm@example.org，快递三天没到！",
    ];
    for (text, result) in complaints.iter().zip(extractor.extract_batch(&complaints)) {
        match result {
            Ok(found) => println!("{}  <-  {text}", found.fields.to_json()),
            Err(e) => eprintln!("error: {e}  <-  {text}"),
        }
    }
    Ok(())
}
