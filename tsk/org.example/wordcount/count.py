"""Counts the words of payload.text (run by tsk/org.example/wordcount/tasker.json)."""
import json
import sys

payload = json.load(sys.stdin)
text = payload.get("text", "")
payload["words"] = len(text.split())
json.dump(payload, sys.stdout)
