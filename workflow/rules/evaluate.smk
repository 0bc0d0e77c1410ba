# The model runs on its ablation's training.device; scoring the noisy input needs no GPU.
# Every evaluation keeps the enhanced WAV of the report's example utterance in eval/example/:
# report.example_utterance, or when null the report's default, the first test utterance
# (mbsnet evaluate chooses it with the report's function). save_wavs adds the whole test set
# in eval/wavs/ (undeclared).
import shlex


rule evaluate:
    input:
        model=results(layout.MODEL),
        manifest=MANIFEST,
    output:
        metrics=report(
            results(layout.EVAL_METRICS),
            caption="../report/metrics.rst",
            category="Evaluation",
            labels={"ablation": "{ablation}", "seed": "{seed}", "table": "per-utterance metrics"},
        ),
        summary=results(layout.EVAL_SUMMARY),
        example=directory(results(layout.EXAMPLE)),
    log:
        rule_log("evaluate"),
    benchmark:
        rule_benchmark("evaluate")
    conda:
        ENV
    threads: THREADS
    resources:
        gpu=gpu_request,
        cpus_per_task=EVALUATION_CPUS,
    params:
        out=subpath(output.metrics, parent=True),
        settings=evaluation_settings,
        wavs="--save-wavs" if config["evaluation"]["save_wavs"] else "",
        example=(
            ""
            if config["report"]["example_utterance"] is None
            else f"--example {shlex.quote(config['report']['example_utterance'])}"
        ),
        workers=config["evaluation"]["workers"],
        device=ablation_device,
    shell:
        mbsnet_shell(
            "evaluate --model {input.model} --data {input.manifest} --out {params.out}"
            " --device {params.device} --workers {params.workers} --threads {threads}"
            " {params.wavs} {params.example} > {log} 2>&1"
        )


rule evaluate_noisy:
    input:
        manifest=MANIFEST,
    output:
        metrics=report(
            results(layout.NOISY_METRICS),
            caption="../report/metrics.rst",
            category="Evaluation",
            labels={"ablation": "noisy", "seed": "-", "table": "per-utterance metrics"},
        ),
        summary=results(layout.NOISY_SUMMARY),
    log:
        rule_log("evaluate_noisy"),
    benchmark:
        rule_benchmark("evaluate_noisy")
    conda:
        ENV
    threads: THREADS
    resources:
        cpus_per_task=EVALUATION_CPUS,
    params:
        out=subpath(output.metrics, parent=True),
        workers=config["evaluation"]["workers"],
    shell:
        mbsnet_shell(
            "evaluate --noisy --data {input.manifest} --out {params.out}"
            " --workers {params.workers} > {log} 2>&1"
        )
