"""Log lines of a node: one line per event, leveled, with the node id, as text or JSON."""

from __future__ import annotations

import json
import logging
from typing import Any

LEVELS = ("debug", "info", "warning", "error")


class NodeFilter(logging.Filter):
    """Puts the node id on every record, as ``record.node``."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node_id
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
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

    PySyncObj logs connection churn at INFO; it is shown from WARNING up unless the level is debug.
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
