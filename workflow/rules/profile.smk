# The pre-flight profile measures a training step, so it runs with its training's device
# and resources (`gpu`, CPUs, memory): the memory budget is checked on the device it guards.
# Profiles run before any training, trainings before evaluations, longer trainings first
# (priority): the trainings are the long jobs, and one started late decides when the run ends.
rule profile:
    output:
        results(layout.PROFILE),
    log:
        rule_log("profile"),
    benchmark:
        rule_benchmark("profile")
    priority: PROFILE_PRIORITY
    conda:
        ENV
    threads: profile_threads
    resources:
        gpu=gpu_request,
        process_threads=profile_process_threads,
        cpus_per_task=training_cpus,
        mem_mb=config["resources"]["train_mem_mb"],
    params:
        config=RESOLVED_CONFIG,
        settings=ablation_settings,
    shell:
        mbsnet_shell(
            "profile --config {params.config} --ablation {wildcards.ablation}"
            " --threads {resources.process_threads} --out {output} > {log} 2>&1"
        )
