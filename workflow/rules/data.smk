rule prepare_data:
    input:
        dataset_input,
    output:
        manifest=MANIFEST,
    log:
        "results/logs/prepare_data.log",
    benchmark:
        "results/benchmarks/prepare_data.tsv"
    priority: PROFILE_PRIORITY  # every training needs it
    conda:
        ENV
    threads: THREADS
    params:
        config=RESOLVED_CONFIG,
        out=subpath(output.manifest, parent=True),
        settings=data_settings,
    shell:
        "mbsnet prepare --config {params.config} --out {params.out} > {log} 2>&1"
