# Databricks notebook source
# MAGIC %md
# MAGIC # segspark job (Databricks notebook)
# MAGIC
# MAGIC The notebook version of the job's entry point (`jobs/run_pipeline.py`, console script
# MAGIC `segspark-job`), for a notebook task or an interactive run. Install the segspark wheel on the
# MAGIC cluster or in the notebook's environment first (a cluster library, a job task library, or
# MAGIC `%pip install <path to the wheel>`); the runtime brings PySpark and Delta.
# MAGIC
# MAGIC Widgets (a job's notebook task passes them as `base_parameters`):
# MAGIC
# MAGIC | widget | meaning |
# MAGIC | --- | --- |
# MAGIC | `command` | `run` (monthly, refits the clustering), `score` (weekly, registered model) or a stage |
# MAGIC | `conf` | config files, comma-separated (e.g. the synced `conf/databricks.yaml` and your inputs) |
# MAGIC | `as_of_date` | `YYYY-MM-DD`; empty: the date of the last clean order |
# MAGIC | `catalog`, `schema` | Unity Catalog location of the output tables |
# MAGIC | `output_path` | folder for the report and MLflow artifacts (a volume path) |
# MAGIC
# MAGIC Each non-empty widget becomes a `--set` item (`as_of_date`, `output.catalog`, `output.schema`,
# MAGIC `output.path`). The pseudonymization key comes from a secret scope (`privacy.secret_scope` /
# MAGIC `privacy.secret_key` in a config file), never from a widget.

# COMMAND ----------

# DBTITLE 1,Widgets -> job arguments
from jobs.run_pipeline import main
from segspark.notebook import JOB_COMMANDS, JOB_WIDGETS, job_args, job_status

try:
    dbutils  # type: ignore[name-defined]  # noqa: B018 - defined by Databricks in every notebook
except NameError:  # outside Databricks: no widgets, their defaults
    dbutils = None

if dbutils is not None:
    for name, (default, label) in JOB_WIDGETS.items():
        if name == "command":
            dbutils.widgets.dropdown(name, default, list(JOB_COMMANDS), label)
        else:
            dbutils.widgets.text(name, default, label)
    widgets = {name: dbutils.widgets.get(name) for name in JOB_WIDGETS}
else:
    widgets = {name: default for name, (default, _label) in JOB_WIDGETS.items()}

argv = job_args(**widgets)
print("segspark-job", " ".join(argv))

# COMMAND ----------

# DBTITLE 1,Run the job
exit_code = main(argv)
status = job_status(argv, exit_code)
print(status)
if exit_code != 0:
    # a failed task, not a notebook that exits normally: 2 = configuration or input, 3 = data quality
    raise RuntimeError(f"segspark {argv[0]} failed: {status} (the error line is in the output above)")
if dbutils is not None:
    dbutils.notebook.exit(status)
