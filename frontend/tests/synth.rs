//! Synthetic models written by `synth` import through the GGUF and Hugging
//! Face readers, hold the same weights in their two layouts, and carry the
//! same tokenizer.

use std::path::{Path, PathBuf};

use fairyc_frontend::gguf::{GgmlType, GgufFile};
use fairyc_frontend::import::{import, Imported};
use fairyc_frontend::safetensors_store::SafetensorsStore;
use fairyc_frontend::synth::{write_gguf, write_hf, Architecture, HfDtype, SynthConfig};
use fairyc_frontend::{gguf_import, hf};
use fairyc_ir::{RopeLayout, WeightStore};

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "fairyc-frontend-synth-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(path: &Path) -> Imported {
    import(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Hugging Face row `half * D/2 + j` of each head is GGUF row `2j + half`.
fn hf_row_of_gguf_row(row: usize, head_dim: usize) -> usize {
    let (head, r) = (row / head_dim, row % head_dim);
    head * head_dim + (r % 2) * (head_dim / 2) + r / 2
}

#[test]
fn both_formats_read_back_with_the_same_config_and_weights() {
    let dir = TempDir::new("config");
    for arch in [Architecture::Llama, Architecture::Qwen2] {
        let cfg = SynthConfig {
            architecture: arch,
            ..SynthConfig::tiny()
        };
        let (gguf_path, hf_dir) = (dir.path("m.gguf"), dir.path("hf"));
        write_gguf(&gguf_path, &cfg, GgmlType::F32).unwrap();
        write_hf(&hf_dir, &cfg, HfDtype::F32).unwrap();

        let file = GgufFile::open(&gguf_path).unwrap();
        let from_gguf = gguf_import::read_config(&file).unwrap();
        let from_hf = hf::read_config(&hf_dir.join("config.json")).unwrap();
        assert_eq!(from_gguf.architecture, arch.name());
        assert_eq!(from_gguf.vocab_size, cfg.vocab_size());
        assert_eq!(
            (from_gguf.hidden_size, from_gguf.intermediate_size),
            (cfg.hidden, cfg.intermediate)
        );
        assert_eq!(
            (from_gguf.layers, from_gguf.heads, from_gguf.kv_heads),
            (cfg.layers, cfg.heads, cfg.kv_heads)
        );
        assert_eq!(from_gguf.head_dim, cfg.head_dim);
        assert_eq!(
            (from_gguf.rope_base, from_gguf.rms_eps),
            (cfg.rope_base, cfg.rms_eps)
        );
        assert_eq!(from_gguf.qkv_bias, arch == Architecture::Qwen2);
        assert_eq!(from_gguf.context_length, cfg.context_length);
        // The same decoder but for names and the RoPE layout.
        // The GGUF store un-permutes llama's q/k rows: RoPE is half-split.
        assert_eq!(from_gguf.rope_layout, RopeLayout::HalfSplit);
        assert_eq!(
            fairyc_frontend::llama::LlamaConfig {
                naming: from_gguf.naming,
                rope_layout: from_gguf.rope_layout,
                ..from_hf
            },
            from_gguf
        );

        // q and k rows are permuted for llama only; everything else is equal.
        let st = SafetensorsStore::open(&[hf_dir.join("model.safetensors")]).unwrap();
        let pairs = [
            (
                "blk.1.attn_q.weight",
                "model.layers.1.self_attn.q_proj.weight",
            ),
            (
                "blk.0.attn_k.weight",
                "model.layers.0.self_attn.k_proj.weight",
            ),
            (
                "blk.0.attn_v.weight",
                "model.layers.0.self_attn.v_proj.weight",
            ),
            (
                "blk.1.ffn_down.weight",
                "model.layers.1.mlp.down_proj.weight",
            ),
            ("output.weight", "lm_head.weight"),
            ("output_norm.weight", "model.norm.weight"),
        ];
        for (g, h) in pairs {
            let (gw, hw) = (file.tensor_f32(g).unwrap(), st.read_f32(h).unwrap());
            let cols = *file.tensor(g).unwrap().shape_row_major().last().unwrap();
            let permuted =
                arch == Architecture::Llama && (g.contains("attn_q") || g.contains("attn_k"));
            for (row, grow) in gw.chunks(cols).enumerate() {
                let hrow = if permuted {
                    hf_row_of_gguf_row(row, cfg.head_dim)
                } else {
                    row
                };
                assert_eq!(grow, &hw[hrow * cols..][..cols], "{g} row {row}");
            }
            if permuted {
                assert_ne!(gw, hw, "{g} should be permuted");
            }
        }
        // The store the importer reads through gives Hugging Face's rows.
        let store = fairyc_frontend::gguf_import::GgufStore::hf_order(
            GgufFile::open(&gguf_path).unwrap(),
            &from_gguf,
        );
        for (g, h) in pairs {
            assert_eq!(store.read_f32(g).unwrap(), st.read_f32(h).unwrap(), "{g}");
        }
        if arch == Architecture::Qwen2 {
            assert_eq!(
                file.tensor_f32("blk.0.attn_q.bias").unwrap(),
                st.read_f32("model.layers.0.self_attn.q_proj.bias").unwrap()
            );
        }
    }
}

#[test]
fn both_formats_verify_and_tokenize_alike() {
    let dir = TempDir::new("tokens");
    let cfg = SynthConfig::tiny();
    write_gguf(&dir.path("m.gguf"), &cfg, GgmlType::F32).unwrap();
    write_hf(&dir.path("hf"), &cfg, HfDtype::F32).unwrap();
    let (g, h) = (load(&dir.path("m.gguf")), load(&dir.path("hf")));
    for text in [
        "the cat sat on the mat",
        "Hello, world! 12345 is ours.\n\tin  the   end",
        "<|im_start|>user\nhi<|im_end|>",
        "ünïcödé 日本 🎉",
    ] {
        for special in [false, true] {
            let ids = g.tokenizer.encode(text, special).unwrap();
            assert_eq!(ids, h.tokenizer.encode(text, special).unwrap(), "{text:?}");
            assert_eq!(g.tokenizer.decode(&ids).unwrap(), text);
        }
    }
    // Merges apply, digits stay single, specials parse.
    let the = g.tokenizer.token_to_id("Ġthe").unwrap();
    assert_eq!(g.tokenizer.encode(" the", false).unwrap(), vec![the]);
    assert_eq!(g.tokenizer.encode("12", false).unwrap().len(), 2);
    assert_eq!(
        g.tokenizer.encode("<|im_start|>", true).unwrap(),
        vec![g.tokenizer.token_to_id("<|im_start|>").unwrap()]
    );
    for t in [&g.tokenizer, &h.tokenizer] {
        assert_eq!((t.bos_id(), t.eos_id()), (Some(0), Some(0)));
        assert!(!t.add_bos());
        assert_eq!(t.vocab_size(), cfg.vocab_size());
        assert!(t.is_eog(2) && t.is_special(1));
    }
}

#[test]
fn quantized_and_bf16_models_import() {
    let dir = TempDir::new("types");
    let cfg = SynthConfig {
        tied_embeddings: true,
        ..SynthConfig::tiny()
    };
    let reference = {
        write_gguf(&dir.path("f32.gguf"), &cfg, GgmlType::F32).unwrap();
        GgufFile::open(&dir.path("f32.gguf"))
            .unwrap()
            .tensor_f32("blk.0.ffn_up.weight")
            .unwrap()
    };
    for (ty, tolerance) in [
        (GgmlType::F16, 1e-3),
        (GgmlType::BF16, 4e-3),
        (GgmlType::Q8_0, 4e-3),
        (GgmlType::Q4_1, 0.05),
        (GgmlType::Q4_0, 0.05),
    ] {
        let path = dir.path(&format!("{ty}.gguf"));
        write_gguf(&path, &cfg, ty).unwrap();
        let imported = load(&path);
        let store = imported.weights.as_ref();
        assert_eq!(
            store.encoding("blk.0.ffn_up.weight").unwrap(),
            ty.to_string()
        );
        assert_eq!(store.encoding("blk.0.attn_norm.weight").unwrap(), "F32");
        assert!(store.tensor_type("output.weight").is_none(), "tied");
        let got = store.read_f32("blk.0.ffn_up.weight").unwrap();
        let err = got
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err > 0.0 && err < tolerance, "{ty}: max error {err}");
    }
    write_hf(&dir.path("bf16"), &cfg, HfDtype::Bf16).unwrap();
    let imported = load(&dir.path("bf16"));
    assert_eq!(
        imported
            .weights
            .encoding("model.embed_tokens.weight")
            .unwrap(),
        "bf16"
    );
    assert!(imported.weights.tensor_type("lm_head.weight").is_none());
}
