//! fairyc against another engine on the real model: llama.cpp's token ids
//! and f32 logits for fixed prompts on SmolLM2-135M-Instruct, from
//! ../shared/reference (see its README). Skips, saying so, when the model
//! or the shared folder is absent; under `make test` that is a failure
//! (tests/common/assets.rs).

mod common;

use std::path::PathBuf;

use fairyc::Model;

fn read_npy<T: npyz::Deserialize>(path: &PathBuf) -> (Vec<u64>, Vec<T>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec().unwrap())
}

#[test]
fn tokens_and_logits_match_llama_cpp() {
    let test = "tokens_and_logits_match_llama_cpp";
    let (Some(model), Some(refs)) = (
        common::smollm2_or_skip(test),
        common::shared_or_skip(test, "reference"),
    ) else {
        return;
    };
    let model = Model::load(&model).unwrap();
    for name in ["capital", "news64", "chat"] {
        let prompt = std::fs::read_to_string(refs.join(format!("{name}.prompt.txt"))).unwrap();
        let (_, want_ids) = read_npy::<i32>(&refs.join(format!("{name}.tokens.npy")));
        let ids = model.tokenizer().encode(&prompt, name == "chat").unwrap();
        let ids_i32: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
        assert_eq!(
            ids_i32, want_ids,
            "{name}: token ids differ from llama.cpp's"
        );

        let (shape, want) = read_npy::<f32>(&refs.join(format!("{name}.logits.npy")));
        let got = model.logits(&ids).unwrap();
        assert_eq!(
            got.shape,
            [shape[0] as usize, shape[1] as usize],
            "{name}: logits shape"
        );
        let got = got.as_f32().unwrap();
        let vocab = shape[1] as usize;
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let mut near_ties = 0;
        for (pos, (g, w)) in got.chunks(vocab).zip(want.chunks(vocab)).enumerate() {
            let top = |row: &[f32]| {
                let mut idx: Vec<usize> = (0..row.len()).collect();
                idx.sort_unstable_by(|&a, &b| row[b].total_cmp(&row[a]));
                (idx[0], row[idx[0]] - row[idx[1]])
            };
            let ((wa, gap), (ga, _)) = (top(w), top(g));
            // A near-tie: the reference's top two are closer than the tolerance.
            if gap < 0.1 {
                near_ties += 1;
                continue;
            }
            assert_eq!(ga, wa, "{name}: argmax differs at position {pos}");
        }
        eprintln!(
            "{name}: {} tokens identical; max |logit - reference| = {max_diff:.4}; {near_ties} near-tie positions",
            ids.len()
        );
        assert!(
            max_diff <= 0.1,
            "{name}: max logit difference {max_diff} exceeds 0.1"
        );
    }
}
