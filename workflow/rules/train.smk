# Checkpoints go to results/{ablation}/seed{seed}/checkpoint/ (layout.CHECKPOINT), which is
# not declared: Snakemake deletes the outputs of a failed job, and a rerun must resume from
# them.
# With training.devices N > 1 the training is N processes: locally under torchrun, on
# SLURM a job of N tasks (and N GPUs) whose command starts them with srun (helpers in
# common.smk).
rule train:
    input:
        manifest=MANIFEST,
        profile=results(layout.PROFILE),
    output:
        model=results(layout.MODEL),
        log_jsonl=results(layout.TRAIN_LOG),
        summary=results(layout.TRAIN_SUMMARY),
    log:
        rule_log("train"),
    benchmark:
        rule_benchmark("train")
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
        mbsnet_shell(
            "train --config {params.config}"
            " --ablation {wildcards.ablation} --seed {wildcards.seed} --data {input.manifest}"
            " --out {params.out} --threads {resources.process_threads} > {log} 2>&1",
            launcher="{resources.launcher}",
        )
