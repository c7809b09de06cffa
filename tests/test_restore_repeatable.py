"""-restore can stay in a service's command line: the restored node restarts as itself, an interrupted restore
starts over, and a backup file that is not there stops the node before anything starts."""

import json
import signal

import requests


def backup_file(tmp_path, data):
    path = tmp_path / "backup.json"
    path.write_text(json.dumps({"format": "hraftd-backup", "version": 1, "raft_index": 7, "node": "old",
                                "data": data}))
    return path


def test_restarting_with_the_same_restore_command_keeps_the_node(cluster, tmp_path):
    backup = backup_file(tmp_path, {"k1": 1, "k2": 2})
    node = cluster.node("restored").start(None, "-restore", str(backup)).wait_ready()
    assert "restored 2 keys" in node.log()
    assert node.set({"k3": 3}).status_code == 200  # changes made after the restore
    assert requests.delete(f"{node.url}/key/k1", timeout=5).json()["deleted"] is True
    assert node.signal_and_wait(signal.SIGTERM) == 0

    backup.unlink()  # gone, and not needed any more: the data dir holds the restored node
    node.start(None, "-restore", str(backup)).wait_ready()
    log = node.log()
    assert log.count("restored 2 keys") == 1
    assert f"{node.data_dir} holds the node restored from {backup}; -restore is ignored" in log
    assert node.get("k1").status_code == 404 and node.value("k2") == 2 and node.value("k3") == 3


def test_an_interrupted_restore_starts_over(cluster, tmp_path):
    node = cluster.node("interrupted")
    earlier = backup_file(tmp_path, {"left-over": 1})
    node.start(None, "-restore", str(earlier)).wait_ready()
    assert node.signal_and_wait(signal.SIGTERM) == 0
    # What a kill in the middle of a restore leaves: the record says loading, and part of the data is in.
    backup = backup_file(tmp_path, {"k": "whole"})
    (node.data_dir / "restore.json").write_text(json.dumps({"backup": str(backup), "state": "loading"}))
    node.start(None, "-restore", str(backup)).wait_ready()
    assert f"the restore into {node.data_dir} did not finish: starting it again" in node.log()
    assert node.value("k") == "whole"
    assert node.get("left-over").status_code == 404  # nothing of the interrupted attempt is kept
    assert json.loads((node.data_dir / "restore.json").read_text())["state"] == "done"


def test_a_missing_backup_stops_the_node_before_anything_starts(cluster, tmp_path):
    node = cluster.node("nobackup")
    node.start(None, "-restore", str(tmp_path / "no-such-backup.json"))
    assert node.process.wait(30) == 3
    log = node.log()
    assert f"cannot read the backup {tmp_path / 'no-such-backup.json'}: No such file or directory" in log
    assert "Starting gunicorn" not in log and "Booting worker" not in log
    assert not node.data_dir.exists()


def test_restore_refuses_a_data_dir_that_holds_another_node(cluster, tmp_path):
    backup = backup_file(tmp_path, {"k": 1})
    node = cluster.node("member").start().wait_ready()
    assert node.signal_and_wait(signal.SIGTERM) == 0
    node.start(None, "-restore", str(backup))
    assert node.process.wait(30) == 3
    assert "-restore needs an empty data directory" in node.log() and "holds no restored node" in node.log()
