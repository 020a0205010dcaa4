//! Training through the Rust API (`fairyc::train`), without the CLI, and
//! training a `.fairy` artifact: from the masters its source checkpoint
//! re-derives, or refused with the reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TempDir;
use fairyc::train::{
    train, Event, ModelSource, Objective, Sharding, TrainConfig, TrainDevice, TrainOptions, Trainer,
};
use fairyc::Model;
use fairyc_frontend::gguf::GgmlType;
use fairyc_frontend::synth::{write_gguf, SynthConfig};
use fairyc_passes::autodiff::GradOptions;
use fairyc_passes::optimizer::AdamW;
use fairyc_passes::pipeline::CompileOptions;

/// A tiny model and text to train it on.
fn setup(dir: &TempDir, name: &str) -> (PathBuf, PathBuf) {
    let model = dir.path(name);
    write_gguf(&model, &SynthConfig::tiny(), GgmlType::F32).unwrap();
    let text = common::training_text(13_500);
    let data = dir.path("data.txt");
    std::fs::write(&data, text.repeat(2)).unwrap();
    (model, data)
}

#[test]
fn a_program_trains_a_model_without_the_cli() {
    let dir = TempDir::new("train-api");
    let (model, data) = setup(&dir, "tiny.gguf");
    let output = dir.path("trained.fairy");
    let config = TrainConfig {
        quant: Some(CompileOptions::default()),
        data: vec![data],
        steps: 40,
        seq: 32,
        lr: 1e-2,
        warmup: 5,
        output: Some(output.clone()),
        ..TrainConfig::default()
    };
    let mut events: Vec<String> = Vec::new();
    let report = train(ModelSource::Path(model), &config, &mut |event| {
        events.push(match event {
            Event::Prepared { .. } => "prepared".into(),
            Event::HeldOutBefore { .. } => "before".into(),
            Event::Started { step, steps } => format!("started {step}/{steps}"),
            Event::Step { record, .. } => format!("step {}", record.step),
            Event::Finished { step } => format!("finished {step}"),
            Event::HeldOutAfter { .. } => "after".into(),
            other => format!("{other:?}"),
        })
    })
    .unwrap();
    let steps: Vec<String> = (1..=40).map(|t| format!("step {t}")).collect();
    let mut want: Vec<String> = ["prepared", "before", "started 0/40"]
        .map(String::from)
        .to_vec();
    want.extend(steps);
    want.extend(["finished 40".to_string(), "after".to_string()]);
    assert_eq!(events, want);
    assert_eq!((report.first_step, report.step), (0, 40));
    assert_eq!(report.tokens, 40 * 32);
    assert_eq!(report.records.len(), 40);
    let (before, after) = (
        report.held_out_before.unwrap(),
        report.held_out_after.unwrap(),
    );
    assert!(after < before - 0.5, "held-out loss {before} -> {after}");
    // The artifact runs.
    let trained = Model::load(&output).unwrap();
    let logits = trained.logits(&[1, 2, 3]).unwrap();
    assert_eq!(logits.shape[0], 3);
}

/// Compiles `model` to a W2 artifact at `path`, as `fairyc compile` does.
fn compile_w2(model: &Path, path: &Path) {
    let imported = fairyc::import(model).unwrap();
    let (compiled, _) = fairyc::compile(imported, &CompileOptions::default()).unwrap();
    let frozen = fairyc::compile::freeze(&compiled.graph, compiled.weights.as_ref()).unwrap();
    fairyc_frontend::fairy::write(
        path,
        &frozen.graph,
        &compiled.graph,
        &compiled.tokenizer,
        &frozen.tensors,
    )
    .unwrap();
}

fn error(source: ModelSource, config: &TrainConfig) -> String {
    match train(source, config, &mut |_| {}) {
        Ok(_) => panic!("training succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_artifact_trains_from_its_source_masters_or_is_refused() {
    let dir = TempDir::new("train-artifact");
    let (model, data) = setup(&dir, "source.gguf");
    let artifact = dir.path("w2.fairy");
    compile_w2(&model, &artifact);
    let config = TrainConfig {
        data: vec![data.clone()],
        steps: 8,
        seq: 16,
        lr: 5e-3,
        ..TrainConfig::default()
    };
    // From the checkpoint, compiled in memory, and from the artifact: the
    // same masters, the same losses.
    let trained = dir.path("trained.fairy");
    let from_source = train(
        ModelSource::Path(model.clone()),
        &TrainConfig {
            quant: Some(CompileOptions::default()),
            output: Some(trained.clone()),
            ..config.clone()
        },
        &mut |_| {},
    )
    .unwrap();
    let from_artifact = train(ModelSource::Path(artifact.clone()), &config, &mut |_| {}).unwrap();
    assert_eq!(from_source.records, from_artifact.records);
    assert_eq!(from_source.held_out_after, from_artifact.held_out_after);

    // Its quantization is fixed.
    let err = error(
        ModelSource::Path(artifact.clone()),
        &TrainConfig {
            quant: Some(CompileOptions::default()),
            ..config.clone()
        },
    );
    assert!(err.contains("train it without --quant"), "{err}");

    // A trained artifact's codes do not come from its source checkpoint.
    let err = error(ModelSource::Path(trained), &config);
    assert!(
        err.contains("2-bit codes")
            && err.contains("not the quantization")
            && err.contains("source.gguf"),
        "{err}"
    );

    // A model trained from scratch has its masters only in its checkpoint.
    let scratch = dir.path("scratch.fairy");
    let llama = dir.path("llama.json");
    let vocab = SynthConfig::tiny().vocab_size();
    std::fs::write(
        &llama,
        format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "vocab_size": {vocab}, "hidden_size": 32,
                "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4,
                "tie_word_embeddings": false}}"#
        ),
    )
    .unwrap();
    let random = || ModelSource::Random {
        config: llama.clone(),
        tokenizer: model.clone(),
        seed: 3,
    };
    train(
        random(),
        &TrainConfig {
            quant: Some(CompileOptions::default()),
            steps: 1,
            output: Some(scratch.clone()),
            ..config.clone()
        },
        &mut |_| {},
    )
    .unwrap();
    let err = error(ModelSource::Path(scratch), &config);
    assert!(
        err.contains("random init, seed 3") && err.contains("--resume"),
        "{err}"
    );

    // Without its source checkpoint there is nothing to re-derive from;
    // the CLI says so too (it used to fail with "%N is code2").
    std::fs::remove_file(&model).unwrap();
    let err = error(ModelSource::Path(artifact.clone()), &config);
    assert!(
        err.contains("only the quantized weights")
            && err.contains("2-bit codes")
            && err.contains("source.gguf")
            && err.contains("train from the source checkpoint"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fairyc"))
        .arg("train")
        .arg(&artifact)
        .arg("--data")
        .arg(&data)
        .args(["--steps", "1", "-o"])
        .arg(dir.path("x.fairy"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("source.gguf")
            && stderr.contains("2-bit codes")
            && !stderr.contains("is code2"),
        "{stderr}"
    );
}

/// `eval_data` is held out whole (every window of `data` trains), and
/// `steps: 0` only evaluates: no step, the same loss before and after.
#[test]
fn evaluation_text_is_held_out_whole_and_zero_steps_only_evaluate() {
    let dir = TempDir::new("train-eval-data");
    let (model, data) = setup(&dir, "tiny.gguf");
    let eval = dir.path("eval.txt");
    std::fs::write(&eval, common::training_text(2_000)).unwrap();
    let run = |eval_data: Vec<PathBuf>| {
        let config = TrainConfig {
            quant: Some(CompileOptions::default()),
            data: vec![data.clone()],
            eval_data,
            steps: 0,
            seq: 16,
            eval_windows: 10_000,
            ..TrainConfig::default()
        };
        let mut windows = (0, 0);
        let report = train(ModelSource::Path(model.clone()), &config, &mut |event| {
            if let Event::Prepared {
                train_windows,
                held_out,
                ..
            } = event
            {
                windows = (train_windows, held_out);
            }
        })
        .unwrap();
        (windows, report)
    };
    let ((train_split, held_split), split) = run(Vec::new());
    let ((train_whole, held_eval), whole) = run(vec![eval.clone()]);
    assert!(held_split > 0 && held_eval > 0);
    assert_eq!(train_whole, train_split + held_split);
    for report in [&split, &whole] {
        assert!(report.records.is_empty() && report.step == 0);
        assert!(report.held_out_before.is_some());
        assert_eq!(report.held_out_before, report.held_out_after);
    }
    assert_ne!(split.held_out_before, whole.held_out_before);
}

/// The teacher's generation stopped by its time limit keeps the whole
/// waves in the cache and trains nothing; runs again go on from there,
/// and the cache ends as one uninterrupted generation's, byte for byte.
#[test]
fn a_time_limited_teacher_generation_goes_on_where_it_stopped() {
    use fairyc::train::TeacherData;
    let dir = TempDir::new("teacher-time-limit");
    let (model, _) = setup(&dir, "tiny.gguf");
    let config = |cache: PathBuf, time_limit| TrainConfig {
        quant: Some(CompileOptions::default()),
        distill: true,
        teacher_data: Some(TeacherData {
            sequences: 13,
            cache,
            seed: 5,
            slots: 4,
            time_limit,
        }),
        steps: 2,
        seq: 16,
        ..TrainConfig::default()
    };
    let run = |config: &TrainConfig| {
        train(ModelSource::Path(model.clone()), config, &mut |_| {}).unwrap()
    };
    let (stopped, whole) = (dir.path("stopped.tok"), dir.path("whole.tok"));
    let limited = config(stopped.clone(), Some(std::time::Duration::from_nanos(1)));
    // One wave of 4 a run: 4 sequences, then 8, 12, and all 13 (the last
    // wave's 3 spare rows dropped, as an uninterrupted run drops them).
    for done in [4, 8, 12] {
        let report = run(&limited);
        assert_eq!(report.teacher_pending, Some((done, 13)));
        assert_eq!((report.step, report.records.len()), (0, 0));
    }
    let finished = run(&limited);
    assert_eq!((finished.teacher_pending, finished.step), (None, 2));
    run(&config(whole.clone(), None));
    assert_eq!(
        std::fs::read(&stopped).unwrap(),
        std::fs::read(&whole).unwrap()
    );
}

/// A time limit stops a run after the step that passes it (every process
/// steps at least once), checkpointed and with its artifact written; a
/// resumed run goes on to `steps` with the straight run's losses.
#[test]
fn a_time_limit_stops_a_run_that_resumes_where_it_stopped() {
    let dir = TempDir::new("train-time-limit");
    let (model, data) = setup(&dir, "tiny.gguf");
    let checkpoint = dir.path("run.ckpt");
    let output = dir.path("out.fairy");
    let config = TrainConfig {
        quant: Some(CompileOptions::default()),
        data: vec![data],
        steps: 4,
        seq: 16,
        lr: 5e-3,
        checkpoint: Some(checkpoint.clone()),
        checkpoint_every: 100,
        ..TrainConfig::default()
    };
    let run = |config: &TrainConfig| {
        train(ModelSource::Path(model.clone()), config, &mut |_| {}).unwrap()
    };
    let stopped = run(&TrainConfig {
        time_limit: Some(std::time::Duration::from_nanos(1)),
        output: Some(output.clone()),
        ..config.clone()
    });
    assert_eq!(stopped.step, 1);
    assert!(checkpoint.is_file() && output.is_file());
    let resumed = run(&TrainConfig {
        resume: true,
        ..config.clone()
    });
    assert_eq!((resumed.first_step, resumed.step), (1, 4));
    std::fs::remove_file(&checkpoint).unwrap();
    let straight = run(&config);
    let last = |r: &fairyc::train::TrainReport| r.records.last().unwrap().loss;
    assert!(
        (last(&resumed) - last(&straight)).abs() <= 1e-4 * last(&straight).abs().max(1.0),
        "step 4: resumed {}, straight {}",
        last(&resumed),
        last(&straight)
    );
}

/// Data-parallel ranks: the same W2 run with each step's 4 windows dealt
/// out to 1, 2 and 3 ranks (here on the CPU's cores; on cuda one GPU each),
/// with every rank holding the optimizer's state, each parameter's on one
/// rank (`Sharding::Optimizer`), or its master too (`Sharding::Masters`:
/// the others rebuild its quantized weights from the codes and scales its
/// owner sends), gives the same losses step by step, within f32
/// summation-order noise, and a run checkpointed on 2 ranks with sharded
/// masters resumes on 1 with the straight run's losses.
#[test]
fn data_parallel_ranks_give_the_losses_of_one() {
    let dir = TempDir::new("ranks");
    let (model, data) = setup(&dir, "tiny.gguf");
    let config = |ranks, steps, sharding| TrainConfig {
        quant: Some(CompileOptions::default()),
        data: vec![data.clone()],
        steps,
        seq: 32,
        grad_accum: 4,
        lr: 1e-2,
        warmup: 2,
        ranks,
        sharding,
        ..TrainConfig::default()
    };
    let run = |config: &TrainConfig| {
        train(ModelSource::Path(model.clone()), config, &mut |_| {}).unwrap()
    };
    let one = run(&config(1, 8, Sharding::Replicated));
    for ranks in [2, 3] {
        for shard in [Sharding::Replicated, Sharding::Optimizer, Sharding::Masters] {
            let many = run(&config(ranks, 8, shard));
            assert_eq!(many.records.len(), one.records.len());
            for (a, b) in one.records.iter().zip(&many.records) {
                assert!(
                    (a.loss - b.loss).abs() <= 1e-4 * a.loss.abs().max(1.0),
                    "step {}: loss {} on 1 rank, {} on {ranks} ({shard:?} sharded)",
                    a.step,
                    a.loss,
                    b.loss
                );
            }
        }
    }
    // Checkpointed on 2 ranks at step 4, resumed on 1 up to step 8.
    let checkpoint = dir.path("ranks.ckpt");
    let with_checkpoint = |ranks, steps, resume| TrainConfig {
        checkpoint: Some(checkpoint.clone()),
        checkpoint_every: 4,
        resume,
        ..config(
            ranks,
            steps,
            if ranks > 1 {
                Sharding::Masters
            } else {
                Sharding::Replicated
            },
        )
    };
    run(&with_checkpoint(2, 4, false));
    let resumed = run(&with_checkpoint(1, 8, true));
    let last = resumed.records.last().unwrap();
    let straight = one.records.last().unwrap();
    assert_eq!(last.step, 8);
    assert!(
        (last.loss - straight.loss).abs() <= 1e-4 * straight.loss.abs().max(1.0),
        "resumed on 1 rank: step 8 loss {}, straight {}",
        last.loss,
        straight.loss
    );
}

/// The same W2 training run with its step on the GPU and on the CPU: the
/// same losses step by step. With f32 products, within f32 summation-order
/// noise grown over the steps. With bf16 products (the GPU trainer's
/// default), each operand of a product is rounded to 8 significant bits (a
/// relative error of at most 2^-9 each, 2^-8 a product), which moves the
/// logits, and so the loss, by a few parts in a thousand: the first two
/// steps (the warm-up, below the full rate) stay within 2^-5 of the loss
/// (at least 1). From the third, at the full rate of 1e-2, the
/// gradients' bf16 noise flips W2 codes whose weights sit near a decision
/// boundary, and a flipped code moves the trajectory itself (measured on an
/// H100: a distilled run 0.04 apart at step 4, where the CPU's loss is
/// 0.39): there the bound, 2^-3, says only that it is the same training.
/// Skipped where no GPU is, unless FAIRYC_REQUIRE_GPU=1.
#[test]
fn training_on_the_gpu_follows_the_cpu() {
    use fairyc::train::TrainDevice;
    use fairyc::{GpuAttention, GpuMatmul};
    if !common::gpu_or_skip() {
        return;
    }
    let dir = TempDir::new("train-gpu");
    let (model, data) = setup(&dir, "tiny.gguf");
    let run = |device, distill| {
        let config = TrainConfig {
            quant: Some(CompileOptions::default()),
            data: vec![data.clone()],
            steps: 10,
            seq: 32,
            grad_accum: 2,
            lr: 1e-2,
            warmup: 2,
            device,
            distill,
            ..TrainConfig::default()
        };
        train(ModelSource::Path(model.clone()), &config, &mut |_| {}).unwrap()
    };
    // Next-token cross-entropy, then distillation (KL divergence from the
    // unquantized model's logits).
    let f32_tolerance = |_: usize| 1e-3f32;
    let bf16_tolerance = |step: usize| if step <= 2 { 1.0f32 / 32.0 } else { 1.0 / 8.0 };
    let modes: [(GpuMatmul, &dyn Fn(usize) -> f32); 2] = [
        (GpuMatmul::F32, &f32_tolerance),
        (GpuMatmul::Bf16, &bf16_tolerance),
    ];
    for (matmul, tolerance) in modes {
        for distill in [false, true] {
            let (cpu, gpu) = (
                run(TrainDevice::Cpu, distill),
                run(TrainDevice::Cuda(matmul, GpuAttention::Products), distill),
            );
            for (c, g) in cpu.records.iter().zip(&gpu.records) {
                eprintln!(
                    "{matmul:?} products, distill {distill}, step {}: loss {} on the cpu, {} on cuda",
                    c.step, c.loss, g.loss
                );
                assert!(
                    (c.loss - g.loss).abs() <= tolerance(c.step) * c.loss.abs().max(1.0),
                    "{matmul:?} products, distill {distill}, step {}: loss {} on the cpu, {} on cuda",
                    c.step,
                    c.loss,
                    g.loss
                );
            }
            assert_eq!(gpu.records.len(), 10);
        }
    }
}

fn windows(w: &[Vec<u32>]) -> Vec<&[u32]> {
    w.iter().map(Vec::as_slice).collect()
}

/// A data-parallel step that fails on one rank (here a token outside the
/// vocabulary in rank 1's window) fails as that rank's, releases the rank
/// waiting for it, and changes nothing: the next step builds a new group
/// and gives what a fresh trainer's first step gives.
#[test]
fn a_failed_data_parallel_step_names_its_rank_and_the_next_one_runs() {
    let dir = TempDir::new("ranks-fail");
    let (model, _) = setup(&dir, "tiny.gguf");
    let imported = fairyc::import(&model).unwrap();
    let options = TrainOptions {
        adam: AdamW::default(),
        grad: GradOptions::default(),
        objective: Objective::NextToken,
        gauss: false,
        rows: 8,
        device: TrainDevice::Cpu,
        ranks: 2,
        sharding: Sharding::Optimizer,
    };
    let trainer = || Trainer::new(&imported.graph, imported.weights.clone(), &options).unwrap();
    let good: Vec<Vec<u32>> = vec![(1..10).collect(), (5..14).collect()];
    let mut bad = good.clone();
    bad[1][3] = 1_000_000;

    let mut failing = trainer();
    let err = failing
        .train_step(&windows(&bad), 1e-3, 0.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("data-parallel rank 1 of 2"), "{err}");
    assert!(err.contains("outside the vocabulary"), "{err}");
    assert_eq!(failing.step, 0);
    let after = failing.train_step(&windows(&good), 1e-3, 0.0).unwrap();
    let fresh = trainer().train_step(&windows(&good), 1e-3, 0.0).unwrap();
    assert!(
        (after.loss - fresh.loss).abs() <= 1e-5 * fresh.loss.abs(),
        "after the failed step {}, fresh {}",
        after.loss,
        fresh.loss
    );
}
