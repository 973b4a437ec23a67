// Red team, issue #16: mint-many! / burn-many! batches the existing
// cross-check does not reach, on the real Clarity VM (clarinet simnet)
// against the devnet's Rust model (crates/devnet/src/model.rs, through
// `cargo run -p devnet --example model_replay`, or $MODEL_REPLAY): full
// 200-element batches, a txid of exactly 72 characters, txids of whitespace
// and punctuation only, a txid in upper case beside its lower-case twin,
// contract principals as recipient and as source, a principal burned down
// to exactly zero across one batch and then short by one, duplicates at the
// first and last positions. After every call the result (every element's
// response), every balance, the supply and every `get-mint` / `get-burn`
// record of every txid used must be identical.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initSimnet } from '@stacks/clarinet-sdk';
import { Cl, deserializeCV, serializeCV } from '@stacks/transactions';

const root = new URL('../../', import.meta.url).pathname;
const simnet = await initSimnet(join(root, 'contracts/Clarinet.toml'));
const accounts = simnet.getAccounts();
const owner = accounts.get('deployer');
const [c, a, b] = ['wallet_1', 'wallet_2', 'wallet_3'].map((w) => accounts.get(w));
// A contract principal: sBTC can be minted to and burned from one.
const vault = `${a}.vault`;
const everyone = [owner, c, a, b, vault];
const key = (x) => Cl.bufferFromHex('02' + x.repeat(32));

const T = 'd81bec73a0ea0bdcf9bc011f567944eb1eae5889bf002bf7ae641d7096157771';
const TXIDS = [
  T,
  T.toUpperCase(), // another map key: a second record for the "same" txid
  'f'.repeat(72), // the longest the contract takes
  ' ', // whitespace only: a non-empty string-ascii
  '\t\n',
  '~!@#$%^&*()_+{}|:"<>?',
  ...Array.from({ length: 200 }, (_, i) => i.toString(16).padStart(64, '0')),
];

const mintEl = (amount, dst, txid) =>
  Cl.tuple({ amount: Cl.uint(amount), dst: Cl.principal(dst), 'peg-in-txid': Cl.stringAscii(txid) });
const burnEl = (amount, src, txid) =>
  Cl.tuple({ amount: Cl.uint(amount), src: Cl.principal(src), 'peg-out-txid': Cl.stringAscii(txid) });
const mm = (els, sender = c) => ({ sender, fn: 'mint-many!', args: [Cl.list(els)] });
const bm = (els, sender = c) => ({ sender, fn: 'burn-many!', args: [Cl.list(els)] });

let deployed = 0;
function onClarity(steps) {
  deployed += 1;
  const contract = `sbtc-alpha-rt${deployed}`;
  const d = simnet.deployContract(contract, simnet.getContractSource('sbtc-alpha'), { clarityVersion: 2 }, owner);
  assert.deepEqual(d.result, Cl.bool(true));
  const read = (fn, args) => serializeCV(simnet.callReadOnlyFn(contract, fn, args, owner).result);
  return steps.map((s) => {
    const result = serializeCV(simnet.callPublicFn(contract, s.fn, s.args, s.sender).result);
    const balances = Object.fromEntries(everyone.map((p) => [p, read('get-balance', [Cl.principal(p)])]));
    const records = (fn) => Object.fromEntries(TXIDS.map((t) => [t, read(fn, [Cl.stringAscii(t)])]));
    return { result, balances, supply: read('get-total-supply', []), mints: records('get-mint'), burns: records('get-burn') };
  });
}

function onModel(steps) {
  const dir = mkdtempSync(join(tmpdir(), 'sbtc-model-rt-'));
  const file = join(dir, 'sequence.json');
  writeFileSync(file, JSON.stringify({
    owner,
    principals: everyone,
    txids: TXIDS,
    steps: steps.map((s) => ({ sender: s.sender, function: s.fn, args: s.args.map((x) => serializeCV(x)) })),
  }));
  const [cmd, args] = process.env.MODEL_REPLAY
    ? [process.env.MODEL_REPLAY, [file]]
    : ['cargo', ['run', '-q', '-p', 'devnet', '--example', 'model_replay', '--', file]];
  return JSON.parse(execFileSync(cmd, args, { cwd: root, encoding: 'utf8', maxBuffer: 256 << 20 }));
}

function compare(steps, clarity, model) {
  assert.equal(model.length, clarity.length);
  for (let i = 0; i < steps.length; i += 1) {
    assert.deepEqual(model[i], clarity[i], `step ${i}: ${steps[i].fn}`);
  }
}

const elements = (hex) => {
  const cv = deserializeCV(hex);
  assert.equal(cv.type, 'ok', `a batch result: ${hex}`);
  return cv.value.value.map((e) => serializeCV(e));
};
const OK = serializeCV(Cl.ok(Cl.bool(true)));
const ERR = (n) => serializeCV(Cl.error(Cl.uint(n)));
const rec = (amount, who) => serializeCV(Cl.some(Cl.tuple({ amount: Cl.uint(amount), principal: Cl.principal(who) })));

test('red team: full 200-element batches of odd txids and contract principals match the Clarity VM', () => {
  const odd = TXIDS.slice(0, 6);
  const many = TXIDS.slice(6);
  // 200 mints: the odd txids to `vault`, then distinct ones to a, b and the
  // vault, the last repeating the first (a replay at position 199).
  const mints = [
    ...odd.map((t) => mintEl(1000n, vault, t)),
    ...many.slice(0, 193).map((t, i) => mintEl(BigInt(i + 1), [a, b, vault][i % 3], t)),
    mintEl(7n, a, odd[0]),
  ];
  assert.equal(mints.length, 200);
  // 200 burns from the vault: it holds 6,000 + the thirds of 1..193 minted
  // to it; the first 199 burn exactly all of it, the 200th (1 more) is short.
  const vaultHas = 6000n + many.slice(0, 193).reduce((s, _, i) => (i % 3 === 2 ? s + BigInt(i + 1) : s), 0n);
  const per = vaultHas / 199n;
  const last = vaultHas - per * 198n;
  const burns = [
    ...many.slice(0, 198).map((t) => burnEl(per, vault, t)),
    burnEl(last, vault, odd[2]), // the 72-character txid
    burnEl(1n, vault, odd[3]), // short by one now
  ];
  assert.equal(burns.length, 200);
  const steps = [
    { sender: owner, fn: 'set-coordinator-data', args: [Cl.tuple({ addr: Cl.principal(c), key: key('11') })] },
    mm(mints),
    bm(burns),
    // The same 200 again: every element a replay.
    bm(burns),
    // Duplicates at the first and last positions of a burn batch of b.
    bm([burnEl(1n, b, odd[4]), ...many.slice(0, 198).map((t) => burnEl(1n, a, t)), burnEl(1n, b, odd[4])]),
  ];
  const clarity = onClarity(steps);
  compare(steps, clarity, onModel(steps));
  const m = elements(clarity[1].result);
  assert.equal(m.length, 200);
  assert.deepEqual(m.slice(0, 199), Array(199).fill(OK), 'both case variants and every odd txid mint');
  assert.equal(m[199], ERR(1004), 'a replay at the last position');
  assert.equal(clarity[1].mints[T], rec(1000n, vault), 'the first of the replayed txid stands');
  assert.equal(clarity[1].mints[T.toUpperCase()], rec(1000n, vault), 'the upper-case twin is its own record');
  const u = elements(clarity[2].result);
  assert.deepEqual(u.slice(0, 199), Array(199).fill(OK));
  assert.equal(u[199], ERR(1007), 'short by one after the vault was burned to zero');
  assert.equal(clarity[2].balances[vault], serializeCV(Cl.ok(Cl.uint(0))));
  assert.equal(clarity[2].burns[odd[3]], serializeCV(Cl.none()), 'the short element leaves no record');
  assert.equal(clarity[2].burns[odd[2]], rec(last, vault), 'the 72-character txid is recorded');
  assert.deepEqual(
    elements(clarity[3].result),
    [...Array(199).fill(ERR(1005)), ERR(1007)],
    'a replayed batch burns nothing (the element that was short has no record, and is still short)',
  );
  assert.equal(clarity[3].supply, clarity[2].supply);
  const d = elements(clarity[4].result);
  assert.equal(d[0], OK);
  assert.equal(d[199], ERR(1005), 'the duplicate at the last position is a replay');
  assert.deepEqual(d.slice(1, 199), Array(198).fill(ERR(1005)), "a's txids were burned from the vault already");
  assert.equal(clarity[4].burns[odd[4]], rec(1n, b), 'one burn, from the principal named');
});
