"""Drives the official Python SDK (lark-oapi) against the gateway.

Run by tests/sdk_clients.rs with the venv made by tests/sdk/install.sh:

    GW_URL=https://localhost:PORT GW_APP_ID=cli_... GW_KEY=<gateway key> \
    REQUESTS_CA_BUNDLE=ca.pem python python_driver.py CASE...

The SDK is configured the way a service would be: the gateway's base URL,
the app id, and the client's GATEWAY key where the app secret goes. Nothing
else. Each case prints one JSON line: {"case", "code", "msg", ...}.
"""

import json
import os
import sys
import traceback

import lark_oapi as lark
from lark_oapi.api.im.v1 import (
    ChatTopNotice,
    PutTopNoticeChatTopNoticeRequest,
    PutTopNoticeChatTopNoticeRequestBody,
)
from lark_oapi.core.exception import ObtainAccessTokenException
from lark_oapi.core.token.manager import TokenManager

GW_URL = os.environ["GW_URL"]
APP_ID = os.environ["GW_APP_ID"]
GW_KEY = os.environ["GW_KEY"]
MESSAGE_ID = "om_dc13264520392913993dd051dba21dcf"


def client():
    """What a service changes: domain, app id, and the gateway key as secret."""
    return (
        lark.Client.builder()
        .app_id(APP_ID)
        .app_secret(GW_KEY)
        .domain(GW_URL)
        .log_level(lark.LogLevel.ERROR)
        .build()
    )


def set_token_client():
    """'Set the token yourself' mode: no token call; the secret is unused."""
    return (
        lark.Client.builder()
        .app_id(APP_ID)
        .app_secret("unused")
        .domain(GW_URL)
        .enable_set_token(True)
        .log_level(lark.LogLevel.ERROR)
        .build()
    )


def put_request(chat_id, action_type="1"):
    notice = ChatTopNotice.builder().action_type(action_type).message_id(MESSAGE_ID).build()
    body = PutTopNoticeChatTopNoticeRequestBody.builder().chat_top_notice([notice]).build()
    return PutTopNoticeChatTopNoticeRequest.builder().chat_id(chat_id).request_body(body).build()


def header(resp, name):
    """A response header, whatever its case on the wire."""
    raw = getattr(resp, "raw", None)
    headers = getattr(raw, "headers", None) or {}
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def outcome(resp):
    """What the caller sees from a typed call: code, msg, log id, status."""
    return {
        "code": resp.code,
        "msg": resp.msg,
        "success": resp.success(),
        # get_log_id() reads "X-Tt-Logid" case-sensitively.
        "log_id": resp.get_log_id(),
        "status": resp.raw.status_code if resp.raw is not None else None,
        "gateway_error": header(resp, "X-Gateway-Error"),
    }


def case_token():
    # The SDK's own token fetch (what every typed call does first).
    token = TokenManager.get_self_tenant_token(client()._config)
    return {
        "code": 0,
        "msg": "",
        "token_prefix": token[:5],
        "token_contains_key": GW_KEY in token,
    }


def case_bad_key():
    # A wrong gateway key: the SDK's token call fails as with a wrong secret.
    # Runs first: the SDK caches tokens per app id for the whole process.
    c = (
        lark.Client.builder()
        .app_id(APP_ID)
        .app_secret("not-the-gateway-key-0000")
        .domain(GW_URL)
        .log_level(lark.LogLevel.ERROR)
        .build()
    )
    try:
        resp = c.im.v1.chat_top_notice.put_top_notice(put_request("oc_sdkpythonbad"))
    except ObtainAccessTokenException as e:
        return {"code": e.code, "msg": e.msg, "raised": type(e).__name__}
    return outcome(resp)


def case_put():
    return outcome(client().im.v1.chat_top_notice.put_top_notice(put_request("oc_sdkpython")))


def case_feishu_error():
    return outcome(client().im.v1.chat_top_notice.put_top_notice(put_request("oc_error232011")))


def case_validation():
    # action_type as the number 1 instead of the string "1".
    return outcome(client().im.v1.chat_top_notice.put_top_notice(put_request("oc_sdkpython", 1)))


def case_rate_limit():
    c = client()
    codes = []
    for _ in range(5):
        resp = c.im.v1.chat_top_notice.put_top_notice(put_request("oc_sdkpython"))
        codes.append(resp.code)
        if resp.code != 0:
            out = outcome(resp)
            out["codes"] = codes
            return out
    return {"code": 0, "msg": "never limited", "codes": codes}


def case_set_token():
    option = lark.RequestOption.builder().tenant_access_token(GW_KEY).build()
    resp = set_token_client().im.v1.chat_top_notice.put_top_notice(put_request("oc_sdkpythonset"), option)
    return outcome(resp)


CASES = {
    "bad_key": case_bad_key,
    "token": case_token,
    "put": case_put,
    "feishu_error": case_feishu_error,
    "validation": case_validation,
    "rate_limit": case_rate_limit,
    "set_token": case_set_token,
}


def main():
    for name in sys.argv[1:]:
        try:
            result = CASES[name]()
        except Exception as e:  # reported, not raised: the test shows it
            result = {
                "code": None,
                "msg": f"{type(e).__name__}: {e}",
                "exception": traceback.format_exc(),
            }
        print(json.dumps({"case": name, **result}), flush=True)


if __name__ == "__main__":
    main()
