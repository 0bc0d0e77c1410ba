# mbsnet: every configured ablation through data preparation, a pre-flight profile,
# training, evaluation and the comparison report.
#   snakemake --cores 4 report        (locally)
#   snakemake --cores 8 report --resources gpu=2   (locally, two GPUs: one per GPU job)
#   snakemake --profile slurm          (on a SLURM cluster, see README)
from snakemake.utils import min_version

min_version("9.20")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# Runs when jobs are about to run (not when parsing, linting or dry-running), once the job
# scheduler exists, so that the signal handlers wrap Snakemake's own.
onstart:
    write_resolved_config()
    stop_jobs_on_interrupt()


# After a successful run (not a dry run, nor one with nothing to do): the report's path and
# its headline table, when this run wrote them.
onsuccess:
    print_report_headline()


rule all:
    default_target: True
    input:
        results(layout.REPORT_HTML),


include: "workflow/rules/data.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
