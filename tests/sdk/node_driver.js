// Drives the official Node SDK (@larksuiteoapi/node-sdk) against the gateway.
//
// Run by tests/sdk_clients.rs after tests/sdk/install.sh:
//
//   GW_URL=https://localhost:PORT GW_APP_ID=cli_... GW_KEY=<gateway key> \
//   NODE_EXTRA_CA_CERTS=ca.pem node node_driver.js CASE...
//
// The SDK is configured the way a service would be: the gateway's base URL,
// the app id, and the client's GATEWAY key where the app secret goes. Nothing
// else. Each case prints one JSON line: {"case", "code", "msg", ...}.
'use strict';

const lark = require('@larksuiteoapi/node-sdk');

const GW_URL = process.env.GW_URL;
const APP_ID = process.env.GW_APP_ID;
const GW_KEY = process.env.GW_KEY;
const MESSAGE_ID = 'om_dc13264520392913993dd051dba21dcf';

// One line per SDK log call: messages only (axios errors carry the request
// config, headers included).
function show(args) {
  return args
    .flat(4)
    .map((x) => (x && x.message ? x.message : typeof x === 'string' ? x : ''))
    .filter(Boolean)
    .join('; ');
}

// The SDK logs to the console; keep stdout for the results.
const quiet = {
  error: (...a) => process.stderr.write(`[sdk error] ${show(a)}\n`),
  warn: () => {},
  info: () => {},
  debug: () => {},
  trace: () => {},
};

// What a service changes: domain, app id, and the gateway key as secret.
function client() {
  return new lark.Client({
    appId: APP_ID,
    appSecret: GW_KEY,
    domain: GW_URL,
    logger: quiet,
  });
}

// "Set the token yourself" mode: no token call; the secret is unused.
function setTokenClient() {
  return new lark.Client({
    appId: APP_ID,
    appSecret: 'unused',
    domain: GW_URL,
    disableTokenCache: true,
    logger: quiet,
  });
}

function putPayload(chatId, actionType = '1') {
  return {
    path: { chat_id: chatId },
    data: { chat_top_notice: [{ action_type: actionType, message_id: MESSAGE_ID }] },
  };
}

// What the caller sees: the SDK resolves with Feishu's body on 2xx and
// rejects with axios's error (the body in error.response.data) otherwise,
// exactly as it does with Feishu itself.
async function outcome(call) {
  try {
    const data = await call();
    return { code: data.code, msg: data.msg, thrown: false, status: 200 };
  } catch (e) {
    const r = e.response;
    if (!r) {
      return { code: null, msg: `${e.name}: ${e.message}`, thrown: true };
    }
    return {
      code: r.data && r.data.code,
      msg: r.data && r.data.msg,
      thrown: true,
      status: r.status,
      log_id: r.headers['x-tt-logid'] || null,
      gateway_error: r.headers['x-gateway-error'] || null,
    };
  }
}

const CASES = {
  // A wrong gateway key: the SDK's token call fails as with a wrong secret.
  // Runs first: the SDK caches tokens per app id for the whole process.
  bad_key: () =>
    outcome(() =>
      new lark.Client({ appId: APP_ID, appSecret: 'not-the-gateway-key-0000', domain: GW_URL, logger: quiet })
        .im.v1.chatTopNotice.putTopNotice(putPayload('oc_sdknodebad')),
    ),
  // The SDK's own token fetch (what every typed call does first).
  token: async () => {
    const token = await client().tokenManager.getTenantAccessToken();
    return {
      code: 0,
      msg: '',
      token_prefix: token.slice(0, 5),
      token_contains_key: token.includes(GW_KEY),
    };
  },
  put: () => outcome(() => client().im.v1.chatTopNotice.putTopNotice(putPayload('oc_sdknode'))),
  feishu_error: () =>
    outcome(() => client().im.v1.chatTopNotice.putTopNotice(putPayload('oc_error232011'))),
  // action_type as the number 1 instead of the string "1".
  validation: () =>
    outcome(() => client().im.v1.chatTopNotice.putTopNotice(putPayload('oc_sdknode', 1))),
  rate_limit: async () => {
    const c = client();
    const codes = [];
    for (let i = 0; i < 5; i += 1) {
      const out = await outcome(() => c.im.v1.chatTopNotice.putTopNotice(putPayload('oc_sdknode')));
      codes.push(out.code);
      if (out.code !== 0) {
        return { ...out, codes };
      }
    }
    return { code: 0, msg: 'never limited', codes };
  },
  set_token: () =>
    outcome(() =>
      setTokenClient().im.v1.chatTopNotice.putTopNotice(
        putPayload('oc_sdknodeset'),
        lark.withTenantToken(GW_KEY),
      ),
    ),
};

async function main() {
  for (const name of process.argv.slice(2)) {
    let result;
    try {
      result = await CASES[name]();
    } catch (e) {
      result = { code: null, msg: `${e.name}: ${e.message}`, exception: String(e.stack) };
    }
    process.stdout.write(`${JSON.stringify({ case: name, ...result })}\n`);
  }
}

main();
