"""``vigie batch --engine spark``: the same compiled packs evaluated in Apache Spark (the
driver's side; what each executor runs is ``vigie.engine.spark``).

The facts of the patients in scope go to Spark as one wide Arrow table, repartitioned by
patient id (every fact of a patient in one partition); ``mapInArrow`` runs the columnar
evaluator on each partition with the packs shipped as their IR (JSON text, loaded once per
executor process) and the site configuration; the alerts come back as rows and are put in the
local run's order, so that ``--engine spark`` writes the same file as ``--engine local``.

The master is ``VIGIE_SPARK_MASTER`` (default ``local[2]``: two cores of this machine, no
cluster). Spark is started quietly (errors only) and listens on the loopback interface when
local. Without pyspark, or when Spark fails (in the JVM or in an executor), the caller gets a
``SparkError`` saying so in one paragraph, never a Py4J or Java trace.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from vigie import settings
from vigie.engine.alerts import Alert
from vigie.engine.site_config import SiteConfig
from vigie.engine.spark import (
    RESULT_DDL,
    PartitionEvaluator,
    PartitionFailure,
    alerts_from_rows,
    wide_table,
)
from vigie.errors import VigieError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["INSTALL_HINT", "SparkError", "evaluate_in_spark", "pyspark_missing", "spark_session"]

INSTALL_HINT = "--engine spark needs pyspark: install vigie[spark] (pip install 'vigie[spark]')"


class SparkError(VigieError):
    """Spark could not run the batch (no pyspark, no JVM, a failure in an executor);
    ``usage`` when it is the command's set-up (``vigie batch`` raises it as its ``BatchError``).
    """

    def __init__(self, message: str, *, usage: bool) -> None:
        super().__init__(message)
        self.usage = usage


_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.pyspark.udf.faulthandler.enabled": "true",
    "spark.python.worker.faulthandler.enabled": "true",
    # a task per core: each task's polars on one thread (not each on every core, which
    # oversubscribes local[2] twice over)
    "spark.executorEnv.POLARS_MAX_THREADS": "1",
}
_LOCAL_CONF = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}

# Spark's own log: errors only, on stderr (its default prints warnings and a banner).
_LOG4J2 = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = error
"""


def evaluate_in_spark(
    irs: Sequence[Mapping[str, Any]],
    frames: Mapping[str, pl.DataFrame],
    as_of: datetime,
    patients: Sequence[str],
    site: SiteConfig | None = None,
    master: str | None = None,
) -> list[Alert]:
    """The alerts of the packs (given as their IR) on the patients' facts, evaluated in Spark:
    those of the local columnar run, in its order (pack after pack, each by rule, patient and
    identity)."""
    table = wide_table(frames, patients)
    if not table.num_rows:
        return []
    evaluator = PartitionEvaluator.of(irs, as_of, site)
    session = spark_session(master)
    try:
        facts = session.createDataFrame(table)
        partitions = max(1, session.sparkContext.defaultParallelism)
        evaluated = facts.repartition(partitions, "patient_id").mapInArrow(evaluator, RESULT_DDL)
        rows = evaluated.toArrow().to_pylist()
    except Exception as error:  # Py4J, JVM and PySpark errors alike: reported, never raw
        raise SparkError(f"Spark failed: {_headline(error)}", usage=False) from None
    try:
        return alerts_from_rows(rows)
    except PartitionFailure as failure:
        raise SparkError(
            f"evaluation failed in a Spark executor (pack {evaluator.pack_name(failure.pack)}): "
            f"{failure.detail}",
            usage=False,
        ) from None


def pyspark_missing() -> str | None:
    """What to install when pyspark is not installed, else None."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return INSTALL_HINT
    return None


def spark_session(master: str | None = None) -> SparkSession:
    """The Spark session of this process (started on first use, quiet); ``SparkError`` when
    pyspark is missing (a usage error) or Spark cannot start."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise SparkError(INSTALL_HINT, usage=True) from None
    master = master or str(settings.value("spark_master"))
    # the executors' Python is this one (Spark's default is whatever python3 is on PATH)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf = dict(_CONF)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        conf.update(_LOCAL_CONF)
    conf["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile=file:{_log_config()}"
    if _java() is None:
        raise SparkError(
            "cannot start Spark: no Java (JAVA_HOME, or java on PATH); it needs Java 17 or newer",
            usage=False,
        )
    builder = SparkSession.builder.master(master).appName("vigie batch")
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as error:  # the JVM did not start: no Java, a bad master...
        raise SparkError(
            f"cannot start Spark (master {master}; Spark needs Java 17 or newer): "
            f"{_headline(error)}",
            usage=False,
        ) from None
    session.sparkContext.setLogLevel("ERROR")
    return session


def _java() -> Path | None:
    """The java Spark's launcher runs: JAVA_HOME's, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = Path(home) / "bin" / "java" if home else shutil.which("java")
    return Path(found) if found is not None and Path(found).exists() else None


@cache
def _log_config() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="vigie-spark-"))
    path = folder / "log4j2.properties"
    path.write_text(_LOG4J2, encoding="utf-8")
    return path


def _headline(error: BaseException) -> str:
    """The first meaningful line of a Spark error (its message without the JVM stack)."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if not line.startswith(("at ", "Traceback", 'File "', "JVM stacktrace")):
            return f"{type(error).__name__}: {line[:400]}"
    return type(error).__name__
