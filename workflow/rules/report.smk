rule report:
    input:
        evals=all_runs("results/{ablation}/seed{seed}/eval/metrics.tsv"),
        examples=all_runs("results/{ablation}/seed{seed}/eval/example"),
        train=all_runs("results/{ablation}/seed{seed}/train_summary.json"),
        profiles=expand("results/{ablation}/profile.json", ablation=ABLATIONS),
        noisy="results/noisy/eval/metrics.tsv",
    output:
        html=report(
            "results/report.html",
            caption="../report/report_html.rst",
            category="Report",
            labels={"file": "report"},
        ),
        tsv=report(
            "results/summary.tsv",
            caption="../report/summary_tsv.rst",
            category="Report",
            labels={"file": "summary table"},
        ),
        md="results/summary.md",
    log:
        "results/logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    conda:
        ENV
    params:
        config=RESOLVED_CONFIG,
        settings=report_settings,
    shell:
        "mbsnet report --config {params.config} --results results --out {output.html} > {log} 2>&1"
