# Checkpoints go to results/{ablation}/seed{seed}/checkpoint/, which is not declared:
# Snakemake deletes the outputs of a failed job, and a rerun must resume from them.
rule train:
    input:
        manifest=MANIFEST,
        profile="results/{ablation}/profile.json",
    output:
        model="results/{ablation}/seed{seed}/model.pt",
        log_jsonl="results/{ablation}/seed{seed}/train_log.jsonl",
        summary="results/{ablation}/seed{seed}/train_summary.json",
    params:
        config=RESOLVED_CONFIG,
        out=run_dir,
        settings=ablation_settings,
    log:
        "results/logs/train/{ablation}_seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{ablation}_seed{seed}.tsv"
    threads: THREADS
    resources:
        gpu=gpu_request,
        cpus_per_task=training_cpus,
        runtime=config["resources"]["train_runtime_min"],
        mem_mb=config["resources"]["train_mem_mb"],
    conda:
        ENV
    shell:
        "mbsnet train --config {params.config} --ablation {wildcards.ablation}"
        " --seed {wildcards.seed} --data {input.manifest} --out {params.out}"
        " --threads {threads} > {log} 2>&1"
