// The devnet's Rust model of the sBTC alpha contract (crates/devnet/src/model.rs)
// against the real Clarity VM (clarinet simnet): the same call sequences —
// mints, burns, replays, unauthorized callers, transfers, halts, owner and
// coordinator changes, the supply cap — must give the same result after
// every call, the same balances, the same supply and the same `get-mint` /
// `get-burn` records (amount and principal) for every txid; batches
// (mint-many! / burn-many!) are compared element by element. The model side runs as
// `cargo run -p devnet --example model_replay` (or $MODEL_REPLAY, a built one).
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
const people = ['wallet_1', 'wallet_2', 'wallet_3'].map((w) => accounts.get(w));
const everyone = [owner, ...people];
const MAX_SUPPLY = 2_100_000_000_000_000n;

// mulberry32: a small deterministic generator, so a failing seed reproduces.
function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    int: (n) => Math.floor(next() * n),
    pick: (xs) => xs[Math.floor(next() * xs.length)],
    chance: (p) => next() < p,
  };
}

const TXIDS = [
  'd81bec73a0ea0bdcf9bc011f567944eb1eae5889bf002bf7ae641d7096157771',
  '3292a7d2a7e941499b5c0dcff2a5656c159010718450948a60c2be9e1c221dc4',
  'a'.repeat(64),
  'b'.repeat(64),
  'x',
  '', // empty: refused
];
const key = (b) => Cl.bufferFromHex('02' + b.repeat(32));

/// A random but well-typed call sequence. The coordinator is usually the
/// caller of mint!/burn!, so state builds up; others call too (unauthorized).
function sequence(seed, length) {
  const r = rng(seed);
  let coordinator = people[0];
  const steps = [
    { sender: owner, fn: 'set-coordinator-data', args: [Cl.tuple({ addr: Cl.principal(coordinator), key: key('11') })] },
  ];
  const amount = () =>
    r.pick([0n, 1n, 1000n, BigInt(r.int(100_000_000)), BigInt(r.int(5_000_000_000)), MAX_SUPPLY, MAX_SUPPLY + 1n, MAX_SUPPLY / 2n]);
  const caller = (usual) => (r.chance(0.8) ? usual : r.pick(everyone));
  for (let i = 0; i < length; i += 1) {
    const kind = r.int(100);
    if (kind < 35) {
      steps.push({ sender: caller(coordinator), fn: 'mint!', args: [Cl.uint(amount()), Cl.principal(r.pick(people)), Cl.stringAscii(r.pick(TXIDS))] });
    } else if (kind < 55) {
      steps.push({ sender: caller(coordinator), fn: 'burn!', args: [Cl.uint(amount()), Cl.principal(r.pick(people)), Cl.stringAscii(r.pick(TXIDS))] });
    } else if (kind < 80) {
      const from = r.pick(people);
      const memo = r.chance(0.5) ? Cl.none() : Cl.some(Cl.bufferFromHex('00'.repeat(r.int(34) + 1)));
      steps.push({ sender: caller(from), fn: 'transfer', args: [Cl.uint(amount()), Cl.principal(from), Cl.principal(r.pick(everyone)), memo] });
    } else if (kind < 87) {
      steps.push({ sender: caller(coordinator), fn: 'set-trading-halted', args: [Cl.bool(r.chance(0.5))] });
    } else if (kind < 92) {
      steps.push({ sender: caller(coordinator), fn: 'set-bitcoin-wallet-public-key', args: [key(r.pick(['22', '33']))] });
    } else if (kind < 96) {
      // The owner hands the coordinator role to someone (it may fail if the
      // owner changed; then the model must fail the same way).
      const next = r.pick(people);
      steps.push({ sender: caller(owner), fn: 'set-coordinator-data', args: [Cl.tuple({ addr: Cl.principal(next), key: key('44') })] });
      coordinator = next;
    } else {
      steps.push({ sender: caller(owner), fn: r.pick(['set-threshold', 'set-num-signers', 'set-num-keys']), args: [Cl.uint(r.int(20))] });
    }
  }
  return steps;
}

let deployed = 0;
/// Runs `steps` on a fresh deployment; returns what the model prints.
function onClarity(steps) {
  deployed += 1;
  const contract = `sbtc-alpha-x${deployed}`;
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
  const dir = mkdtempSync(join(tmpdir(), 'sbtc-model-'));
  const file = join(dir, 'sequence.json');
  writeFileSync(file, JSON.stringify({
    owner,
    principals: everyone,
    txids: TXIDS,
    steps: steps.map((s) => ({ sender: s.sender, function: s.fn, args: s.args.map((a) => serializeCV(a)) })),
  }));
  // scripts/test.sh names the example it just built; run alone, cargo builds it.
  const [cmd, args] = process.env.MODEL_REPLAY
    ? [process.env.MODEL_REPLAY, [file]]
    : ['cargo', ['run', '-q', '-p', 'devnet', '--example', 'model_replay', '--', file]];
  const out = execFileSync(cmd, args, {
    cwd: root,
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  return JSON.parse(out);
}

function compare(steps, clarity, model) {
  assert.equal(model.length, clarity.length);
  for (let i = 0; i < steps.length; i += 1) {
    const what = `step ${i}: ${steps[i].fn} by ${steps[i].sender} (${steps[i].args.map((a) => serializeCV(a)).join(', ')})`;
    assert.deepEqual(model[i], clarity[i], what);
  }
}

const outcomes = (results) => new Set(results.map((r) => r.result));

for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
  test(`random call sequence ${seed}: the model matches the Clarity VM`, () => {
    const steps = sequence(seed, 150);
    const clarity = onClarity(steps);
    compare(steps, clarity, onModel(steps));
    // The sequence reached more than the error paths.
    assert.ok(clarity.some((r) => r.result === serializeCV(Cl.ok(Cl.bool(true)))), 'some calls succeed');
    assert.ok(outcomes(clarity).size >= 4, 'several distinct outcomes');
  });
}

test('the supply cap, replays and halts, step by step, match', () => {
  const [c, a, b] = people;
  const m = (amount, dst, txid, sender = c) => ({ sender, fn: 'mint!', args: [Cl.uint(amount), Cl.principal(dst), Cl.stringAscii(txid)] });
  const burn = (amount, src, txid, sender = c) => ({ sender, fn: 'burn!', args: [Cl.uint(amount), Cl.principal(src), Cl.stringAscii(txid)] });
  const t = (amount, from, to, sender = from) => ({ sender, fn: 'transfer', args: [Cl.uint(amount), Cl.principal(from), Cl.principal(to), Cl.none()] });
  const steps = [
    { sender: owner, fn: 'set-coordinator-data', args: [Cl.tuple({ addr: Cl.principal(c), key: key('11') })] },
    m(MAX_SUPPLY - 1n, a, TXIDS[0]),
    m(2n, b, TXIDS[1]), // past the cap
    m(1n, b, TXIDS[1]), // exactly the cap
    m(1n, b, TXIDS[2]), // nothing left
    m(1n, b, TXIDS[0]), // replay
    burn(5n, a, TXIDS[0]),
    burn(5n, a, TXIDS[0]), // replay
    burn(MAX_SUPPLY, b, TXIDS[3]), // more than b holds
    t(10n, a, b),
    t(10n, a, b, b), // b moving a's tokens
    { sender: c, fn: 'set-trading-halted', args: [Cl.bool(true)] },
    t(10n, a, b),
    { sender: c, fn: 'set-trading-halted', args: [Cl.bool(false)] },
    t(0n, a, b),
    t(MAX_SUPPLY, a, b),
    { sender: owner, fn: 'set-contract-owner', args: [Cl.principal(a)] },
    { sender: owner, fn: 'set-coordinator-data', args: [Cl.tuple({ addr: Cl.principal(b), key: key('22') })] },
    { sender: a, fn: 'set-coordinator-data', args: [Cl.tuple({ addr: Cl.principal(b), key: key('22') })] },
    m(1n, a, TXIDS[3]), // the old coordinator
    burn(1n, a, TXIDS[3], b),
  ];
  const clarity = onClarity(steps);
  compare(steps, clarity, onModel(steps));
  assert.equal(clarity[3].result, serializeCV(Cl.ok(Cl.bool(true))), 'minted up to the cap');
  assert.equal(clarity[2].result, serializeCV(Cl.error(Cl.uint(1006))), 'the cap holds');
  // The records were compared with content, not only `none`s.
  const rec = (amount, who) => serializeCV(Cl.some(Cl.tuple({ amount: Cl.uint(amount), principal: Cl.principal(who) })));
  assert.equal(clarity[1].mints[TXIDS[0]], rec(MAX_SUPPLY - 1n, a), 'the mint is recorded with its recipient');
  assert.equal(clarity[6].burns[TXIDS[0]], rec(5n, a), 'the burn is recorded with its source');
  assert.equal(clarity[7].burns[TXIDS[0]], rec(5n, a), 'a refused replay leaves the record');
});

// --- batches: mint-many! / burn-many! ----------------------------------------

const mintEl = (amount, dst, txid) =>
  Cl.tuple({ amount: Cl.uint(amount), dst: Cl.principal(dst), 'peg-in-txid': Cl.stringAscii(txid) });
const burnEl = (amount, src, txid) =>
  Cl.tuple({ amount: Cl.uint(amount), src: Cl.principal(src), 'peg-out-txid': Cl.stringAscii(txid) });

/// Random batches (failing elements included: zero amounts, empty and
/// repeated txids, the cap, short balances), mixed with single calls and
/// transfers, so the batches meet state the singles built and vice versa.
function batchSequence(seed, length) {
  const r = rng(seed);
  const [coordinator] = people;
  const steps = [
    { sender: owner, fn: 'set-coordinator-data', args: [Cl.tuple({ addr: Cl.principal(coordinator), key: key('11') })] },
  ];
  const amount = () =>
    r.pick([0n, 1n, 1000n, BigInt(r.int(100_000_000)), BigInt(r.int(5_000_000_000)), MAX_SUPPLY / 4n, MAX_SUPPLY + 1n]);
  const caller = () => (r.chance(0.9) ? coordinator : r.pick(everyone));
  for (let i = 0; i < length; i += 1) {
    const kind = r.int(100);
    const n = r.pick([0, 1, 2, 5, 12]);
    if (kind < 40) {
      const els = Array.from({ length: n }, () => mintEl(amount(), r.pick(everyone), r.pick(TXIDS)));
      steps.push({ sender: caller(), fn: 'mint-many!', args: [Cl.list(els)] });
    } else if (kind < 75) {
      const els = Array.from({ length: n }, () => burnEl(amount(), r.pick(people), r.pick(TXIDS)));
      steps.push({ sender: caller(), fn: 'burn-many!', args: [Cl.list(els)] });
    } else if (kind < 85) {
      steps.push({ sender: caller(), fn: 'mint!', args: [Cl.uint(amount()), Cl.principal(r.pick(people)), Cl.stringAscii(r.pick(TXIDS))] });
    } else if (kind < 92) {
      steps.push({ sender: caller(), fn: 'burn!', args: [Cl.uint(amount()), Cl.principal(r.pick(people)), Cl.stringAscii(r.pick(TXIDS))] });
    } else {
      const from = r.pick(people);
      steps.push({ sender: from, fn: 'transfer', args: [Cl.uint(amount()), Cl.principal(from), Cl.principal(r.pick(everyone)), Cl.none()] });
    }
  }
  return steps;
}

const isBatch = (s) => s.fn === 'mint-many!' || s.fn === 'burn-many!';
/// Every element response of the batch results, as hex.
const elementOutcomes = (steps, clarity) => {
  const seen = new Set();
  steps.forEach((s, i) => {
    if (!isBatch(s)) return;
    const cv = deserializeCV(clarity[i].result);
    if (cv.type !== 'ok') return;
    for (const e of cv.value.value) seen.add(serializeCV(e));
  });
  return seen;
};

for (const seed of [11, 12, 13, 14, 15, 16]) {
  test(`random batches ${seed}: the model matches the Clarity VM, element by element`, () => {
    const steps = batchSequence(seed, 60);
    const clarity = onClarity(steps);
    compare(steps, clarity, onModel(steps));
    const els = elementOutcomes(steps, clarity);
    // The batches reached successes and failures inside one call.
    assert.ok(els.has(serializeCV(Cl.ok(Cl.bool(true)))), 'some elements succeed');
    assert.ok(els.size >= 3, `several distinct element outcomes: ${[...els]}`);
  });
}

test('batches: the cap mid-batch, replays inside and across batches, short balances, match', () => {
  const [c, a, b] = people;
  const [T0, T1, T2, T3] = TXIDS;
  const mm = (els, sender = c) => ({ sender, fn: 'mint-many!', args: [Cl.list(els)] });
  const bm = (els, sender = c) => ({ sender, fn: 'burn-many!', args: [Cl.list(els)] });
  const steps = [
    { sender: owner, fn: 'set-coordinator-data', args: [Cl.tuple({ addr: Cl.principal(c), key: key('11') })] },
    mm([]), // empty: (ok ()), nothing
    mm([mintEl(10n, a, T0)], a), // not the coordinator
    // The cap hit mid-batch: T0 and T1 stand, T2 fails (50 > 40 left), T3 still fits.
    mm([mintEl(MAX_SUPPLY - 100n, a, T0), mintEl(60n, b, T1), mintEl(50n, b, T2), mintEl(30n, b, T3)]),
    mm([mintEl(1n, a, T2), mintEl(1n, b, T2), mintEl(0n, a, T3), mintEl(1n, a, '')]), // replay inside the batch
    { sender: c, fn: 'mint!', args: [Cl.uint(1n), Cl.principal(a), Cl.stringAscii(T0)] }, // replay of a batch mint
    // b holds 90: the first burn takes 60, the second is short (31 > 30), the
    // third is a replay, the fourth reuses the short one's txid and stands.
    bm([burnEl(60n, b, T0), burnEl(31n, b, T1), burnEl(1n, b, T0), burnEl(1n, b, T1)]),
    { sender: c, fn: 'burn!', args: [Cl.uint(1n), Cl.principal(a), Cl.stringAscii(T1)] }, // replay of a batch burn
    bm([burnEl(0n, a, T2), burnEl(1n, a, ''), burnEl(MAX_SUPPLY, a, T2), burnEl(5n, a, T2)]),
  ];
  const clarity = onClarity(steps);
  compare(steps, clarity, onModel(steps));
  assert.equal(clarity[1].result, serializeCV(Cl.ok(Cl.list([]))), 'an empty batch is (ok ())');
  assert.equal(clarity[2].result, serializeCV(Cl.error(Cl.uint(1002))), 'only the coordinator');
  assert.equal(
    clarity[3].result,
    serializeCV(Cl.ok(Cl.list([Cl.ok(Cl.bool(true)), Cl.ok(Cl.bool(true)), Cl.error(Cl.uint(1006)), Cl.ok(Cl.bool(true))]))),
  );
  assert.equal(clarity[3].mints[T2], serializeCV(Cl.none()), 'a failed element leaves no record');
  assert.equal(
    clarity[4].result,
    serializeCV(Cl.ok(Cl.list([Cl.ok(Cl.bool(true)), Cl.error(Cl.uint(1004)), Cl.error(Cl.uint(1003)), Cl.error(Cl.uint(1010))]))),
  );
  assert.equal(clarity[5].result, serializeCV(Cl.error(Cl.uint(1004))), 'mint! refuses a txid a batch minted');
  assert.equal(
    clarity[6].result,
    serializeCV(Cl.ok(Cl.list([Cl.ok(Cl.bool(true)), Cl.error(Cl.uint(1007)), Cl.error(Cl.uint(1005)), Cl.ok(Cl.bool(true))]))),
  );
  assert.equal(clarity[7].result, serializeCV(Cl.error(Cl.uint(1005))), 'burn! refuses a txid a batch burned');
  assert.equal(clarity[6].burns[T1], serializeCV(Cl.some(Cl.tuple({ amount: Cl.uint(1n), principal: Cl.principal(b) }))));
});
