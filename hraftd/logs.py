"""Log lines of a node: one line per event, leveled, with the node id, as text or JSON.

Lines come from loggers named ``hraftd`` and ``hraftd.*``; gunicorn's own lines about the process (start,
signals, workers) are shown as ``hraftd.server``, since ``gunicorn.error`` reads as an error when it is not.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any


class NodeFilter(logging.Filter):
    """Puts the node id on every record, as ``record.node``, and names gunicorn's process lines for hraftd."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node_id
        if record.name == "gunicorn.error":
            record.name = "hraftd.server"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "node": getattr(record, "node", None),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def logging_config(node_id: str, level: str = "info", json_format: bool = False, access_log: bool = False,
                   ) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the whole node process, gunicorn's loggers included.

    ``hraftd`` and ``hraftd.*`` log at ``level``, the root's. PySyncObj logs connection churn at INFO; it is shown from
    WARNING up unless the level is debug.
    """
    level_name = level.upper()
    formatter: dict[str, Any] = ({"()": JsonFormatter} if json_format else
                                 {"format": "%(asctime)s %(levelname)s [%(node)s] %(name)s: %(message)s"})

    def handler(stream: str) -> dict[str, Any]:
        return {"class": "logging.StreamHandler", "stream": f"ext://sys.{stream}", "formatter": "node",
                "filters": ["node"]}

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"node": {"()": NodeFilter, "node_id": node_id}},
        "formatters": {"node": formatter},
        "handlers": {"stderr": handler("stderr"), "stdout": handler("stdout")},
        "root": {"level": level_name, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level_name, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO" if access_log else "WARNING", "handlers": ["stdout"],
                                "propagate": False},
            "pysyncobj": {"level": level_name if level == "debug" else "WARNING"},
        },
    }
