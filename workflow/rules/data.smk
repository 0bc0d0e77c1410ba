rule prepare_data:
    input:
        dataset_input,
    output:
        manifest=MANIFEST,
    params:
        config=RESOLVED_CONFIG,
        out=subpath(output.manifest, parent=True),
        settings=data_settings,
    log:
        "results/logs/prepare_data.log",
    benchmark:
        "results/benchmarks/prepare_data.tsv"
    threads: THREADS
    conda:
        ENV
    shell:
        "mbsnet prepare --config {params.config} --out {params.out} > {log} 2>&1"
