//! Speculative decoding changes no output. On the committed tiny checkpoints, copy-mode greedy
//! fields, token counts and truncation with drafts of fixed lengths and with the adaptive length
//! equal those of decoding one token at a time, alone (batch 1) and in batches where rows feed
//! drafts of different lengths in the same pass, on every backend built (flex, and wgpu on
//! lavapipe in `scripts/test`). Drafts must have been made and verified. These random-weight
//! models never pick what the text continues with (measured: 0 of 724 drafted tokens kept), so
//! here the drafts are all rolled back; keeping them is proved where a model copies: the
//! quickstart test (a trained model: the same output file, most drafted tokens kept) and the
//! engine's unit test of a verified draft's bookkeeping.

use std::path::Path;

use burn::prelude::*;
use tiqu_core::generate::Sampling;
use tiqu_core::{Constrain, ExtractOptions, Extractor, Speculate};

const TEXTS: [&str; 5] = [
    "龙琳，宁夏回族自治区璐市城东林街g座 955491，邮箱 nafan@example.com。小区垃圾堆积成山，物业不管，臭气熏天！！",
    "王小明 上海市浦东新区世纪大道100号 xm@example.org 快递三天没到，打电话也没人接，王小明 王小明",
    "Call me Ishmael. Email: ishmael@pequod.example\nAddress: Nantucket, Nantucket, Nantucket",
    "投诉人：李雷；地址：北京市海淀区中关村大街1号；邮箱：lilei@example.cn；问题：噪音扰民 噪音扰民",
    "x",
];

fn extractor<B: Backend>(fixture: &str, speculate: Speculate, batch: usize, device: &B::Device) -> Extractor<B> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(fixture);
    let options = ExtractOptions { constrain: Constrain::Copy, max_new_tokens: 48, batch, speculate, ..Default::default() };
    Extractor::<B>::load(&dir, None, device).unwrap().with_options(options)
}

pub fn speculation_keeps_greedy_outputs<B: Backend>(device: &B::Device) {
    let (mut drafted, mut accepted) = (0, 0);
    for fixture in ["tiny-untied", "tiny-tied"] {
        for batch in [1, 3] {
            let plain: Vec<String> = extractor::<B>(fixture, Speculate::Off, batch, device)
                .extract_batch(&TEXTS)
                .into_iter()
                .map(|r| {
                    let x = r.unwrap();
                    assert_eq!((x.drafted, x.accepted), (0, 0), "off drafts nothing");
                    format!("{} {} {}", x.fields.to_json(), x.tokens, x.truncated)
                })
                .collect();
            for speculate in [Speculate::Fixed(1), Speculate::Fixed(3), Speculate::Fixed(16), Speculate::Auto] {
                let results = extractor::<B>(fixture, speculate, batch, device).extract_batch(&TEXTS);
                for (i, r) in results.into_iter().enumerate() {
                    let x = r.unwrap();
                    assert!(x.accepted <= x.drafted);
                    drafted += x.drafted;
                    accepted += x.accepted;
                    let got = format!("{} {} {}", x.fields.to_json(), x.tokens, x.truncated);
                    assert_eq!(got, plain[i], "{fixture}, batch {batch}, speculate {speculate}, text {i}");
                }
            }
        }
    }
    eprintln!("{accepted} of {drafted} drafted tokens kept");
    assert!(drafted > 100, "drafts were made and verified: {drafted}");
}

/// Sampled extraction with drafts gives the records sampling one token at a time gives, for
/// the same seed: each pick, drafted position or not, is one draw from the row's own stream, so
/// the draws line up, and a drafted token is kept exactly when the draw picks it (the acceptance
/// rule for a one-point draft). 200 sampled records of the seed's text at a temperature high
/// enough that this random-weight model follows the text at times: drafts kept and rejected,
/// the records varied, and each equal to its one-at-a-time twin.
pub fn speculation_keeps_sampled_outputs<B: Backend>(device: &B::Device) {
    let texts = vec![TEXTS[0]; 200];
    let sampled = |speculate| {
        let options = ExtractOptions {
            constrain: Constrain::Copy,
            max_new_tokens: 24,
            batch: 8,
            speculate,
            sampling: Sampling::Sample { temperature: 20.0, top_k: None, top_p: None, seed: 11 },
            ..Default::default()
        };
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-untied");
        let ex = Extractor::<B>::load(&dir, None, device).unwrap().with_options(options);
        ex.extract_batch(&texts).into_iter().map(Result::unwrap).collect::<Vec<_>>()
    };
    let plain = sampled(Speculate::Off);
    let distinct: std::collections::HashSet<String> = plain.iter().map(|x| x.fields.to_json().to_string()).collect();
    assert!(distinct.len() > 50, "the records vary: {} distinct", distinct.len());
    // `auto` drafts little with 8 rows decoding (a pass would pay every row's draft columns).
    for speculate in [Speculate::Fixed(1), Speculate::Fixed(4), Speculate::Fixed(16), Speculate::Auto] {
        let drafted = sampled(speculate);
        let kept: usize = drafted.iter().map(|x| x.accepted).sum();
        let proposed: usize = drafted.iter().map(|x| x.drafted).sum();
        eprintln!("speculate {speculate}: {kept} of {proposed} drafted tokens kept");
        assert!(speculate == Speculate::Auto || (kept > 10 && kept < proposed), "drafts kept and rejected: {kept} of {proposed}");
        for (i, (a, b)) in plain.iter().zip(&drafted).enumerate() {
            assert_eq!((&a.fields, a.tokens), (&b.fields, b.tokens), "record {i}, speculate {speculate}");
        }
    }
}

macro_rules! backend_tests {
    ($module:ident, $backend:ty) => {
        mod $module {
            #[test]
            fn speculation_keeps_greedy_outputs() {
                super::speculation_keeps_greedy_outputs::<$backend>(&Default::default());
            }

            #[test]
            fn speculation_keeps_sampled_outputs() {
                super::speculation_keeps_sampled_outputs::<$backend>(&Default::default());
            }
        }
    };
}

#[cfg(feature = "flex")]
backend_tests!(flex, burn::backend::Flex);
#[cfg(feature = "wgpu")]
backend_tests!(wgpu, burn::backend::Wgpu);
#[cfg(feature = "cuda")]
backend_tests!(cuda, burn::backend::Cuda);
