rule profile:
    output:
        "results/{ablation}/profile.json",
    params:
        config=RESOLVED_CONFIG,
        settings=ablation_settings,
    log:
        "results/logs/profile/{ablation}.log",
    benchmark:
        "results/benchmarks/profile/{ablation}.tsv"
    threads: THREADS
    conda:
        ENV
    shell:
        "mbsnet profile --config {params.config} --ablation {wildcards.ablation}"
        " --threads {threads} --out {output} > {log} 2>&1"
