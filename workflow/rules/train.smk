# Checkpoints go to results/{ablation}/seed{seed}/checkpoint/, which is not declared:
# Snakemake deletes the outputs of a failed job, and a rerun must resume from them.
# With training.devices N > 1 the training is N processes: locally under torchrun, on
# SLURM a job of N tasks (and N GPUs) whose command starts them with srun (helpers in
# common.smk).
rule train:
    input:
        manifest=MANIFEST,
        profile="results/{ablation}/profile.json",
    output:
        model="results/{ablation}/seed{seed}/model.pt",
        log_jsonl="results/{ablation}/seed{seed}/train_log.jsonl",
        summary="results/{ablation}/seed{seed}/train_summary.json",
    log:
        "results/logs/train/{ablation}_seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{ablation}_seed{seed}.tsv"
    priority: train_priority
    conda:
        ENV
    threads: train_threads
    resources:
        gpu=train_gpus,
        cpus_per_task=training_cpus,
        tasks=train_tasks,
        tasks_per_gpu=train_tasks_per_gpu,
        mpi=train_mpi,
        launcher=train_launcher,
        process_threads=process_threads,
        runtime=config["resources"]["train_runtime_min"],
        mem_mb=train_mem_mb,
    params:
        config=RESOLVED_CONFIG,
        out=run_dir,
        settings=ablation_settings,
    shell:
        "{resources.launcher}mbsnet train --config {params.config}"
        " --ablation {wildcards.ablation} --seed {wildcards.seed} --data {input.manifest}"
        " --out {params.out} --threads {resources.process_threads} > {log} 2>&1"
