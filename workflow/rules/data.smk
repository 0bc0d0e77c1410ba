rule prepare_data:
    input:
        dataset_input,
    output:
        manifest=MANIFEST,
    log:
        rule_log("prepare_data"),
    benchmark:
        rule_benchmark("prepare_data")
    priority: PROFILE_PRIORITY  # every training needs it
    conda:
        ENV
    threads: THREADS
    params:
        config=RESOLVED_CONFIG,
        out=subpath(output.manifest, parent=True),
        settings=data_settings,
    shell:
        mbsnet_shell("prepare --config {params.config} --out {params.out} > {log} 2>&1")
