rule report:
    input:
        evals=all_runs(results(layout.EVAL_METRICS)),
        examples=all_runs(results(layout.EXAMPLE)),
        train=all_runs(results(layout.TRAIN_SUMMARY)),
        profiles=expand(results(layout.PROFILE), ablation=ABLATIONS),
        noisy=results(layout.NOISY_METRICS),
    output:
        html=report(
            results(layout.REPORT_HTML),
            caption="../report/report_html.rst",
            category="Report",
            labels={"file": "report"},
        ),
        tsv=report(
            results(layout.SUMMARY_TSV),
            caption="../report/summary_tsv.rst",
            category="Report",
            labels={"file": "summary table"},
        ),
        md=results(layout.SUMMARY_MD),
    log:
        rule_log("report"),
    benchmark:
        rule_benchmark("report")
    conda:
        ENV
    params:
        config=RESOLVED_CONFIG,
        settings=report_settings,
    shell:
        mbsnet_shell(
            f"report --config {{params.config}} --results {layout.RESULTS}"
            " --out {output.html} > {log} 2>&1"
        )
