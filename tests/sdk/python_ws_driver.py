"""Runs the official Python SDK's long-connection client (lark_oapi.ws)
against the simulated Feishu, to check that the fake speaks Feishu's
protocol as the SDK does.

Run by tests/sdk_events.rs with the venv made by tests/sdk/install.sh:

    SIM_URL=http://127.0.0.1:PORT SIM_APP_ID=cli_... SIM_APP_SECRET=... \
    python python_ws_driver.py

The client gets the endpoint (POST /callback/ws/endpoint), connects, pings,
and hands each event to its handlers, which print one JSON line each:
{"event": <type>, ...}. A card callback's handler answers a toast, which
the SDK returns to Feishu base64 in its ack. Runs until killed.
"""

import json
import os
import sys

import lark_oapi as lark
from lark_oapi.event.callback.model.p2_card_action_trigger import (
    P2CardActionTrigger,
    P2CardActionTriggerResponse,
)


def say(**fields):
    print(json.dumps(fields), flush=True)


def on_message(data):
    message = data.event.message
    say(
        event="im.message.receive_v1",
        event_id=data.header.event_id,
        message_id=message.message_id,
        content=message.content,
    )


def on_card(data: P2CardActionTrigger) -> P2CardActionTriggerResponse:
    say(event="card.action.trigger", event_id=data.header.event_id, value=data.event.action.value)
    return P2CardActionTriggerResponse({"toast": {"type": "success", "content": "done by the sdk"}})


def main():
    handler = (
        lark.EventDispatcherHandler.builder("", "")
        .register_p2_im_message_receive_v1(on_message)
        .register_p2_card_action_trigger(on_card)
        .build()
    )
    client = lark.ws.Client(
        os.environ["SIM_APP_ID"],
        os.environ["SIM_APP_SECRET"],
        event_handler=handler,
        domain=os.environ["SIM_URL"],
        log_level=lark.LogLevel.DEBUG,
    )
    say(event="starting")
    client.start()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the test reads it from stdout
        say(event="exception", error=repr(e))
        sys.exit(1)
