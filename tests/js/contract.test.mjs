// The sBTC alpha contract on the real Clarity VM (clarinet simnet, offline).
// Covers every public function, every error path and the replay guard, batches included.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { initSimnet } from '@stacks/clarinet-sdk';
import { Cl } from '@stacks/transactions';

const simnet = await initSimnet(new URL('../../contracts/Clarinet.toml', import.meta.url).pathname);
const accounts = simnet.getAccounts();
const owner = accounts.get('deployer');
const coordinator = accounts.get('wallet_1');
const alice = accounts.get('wallet_2');
const bob = accounts.get('wallet_3');

const ERR = {
  NOT_OWNER: 1001, NOT_COORDINATOR: 1002, INVALID_AMOUNT: 1003, ALREADY_MINTED: 1004,
  ALREADY_BURNED: 1005, SUPPLY_CAP: 1006, INSUFFICIENT_BALANCE: 1007, NOT_TOKEN_OWNER: 1008,
  TRADING_HALTED: 1009, INVALID_TXID: 1010,
};
const KEY = Cl.bufferFromHex('02' + '11'.repeat(32));
const TXID_A = 'd81bec73a0ea0bdcf9bc011f567944eb1eae5889bf002bf7ae641d7096157771';
const TXID_B = '3292a7d2a7e941499b5c0dcff2a5656c159010718450948a60c2be9e1c221dc4';

// Each test gets its own deployment of the contract, so tests never share state.
let contract = 'sbtc-alpha';
let deployed = 0;
const call = (fn, args, sender) => simnet.callPublicFn(contract, fn, args, sender).result;
const read = (fn, args = []) => simnet.callReadOnlyFn(contract, fn, args, owner).result;
const ok = (v) => Cl.ok(v);
const err = (code) => Cl.error(Cl.uint(code));
const mint = (amount, dst, txid, sender = coordinator) =>
  call('mint!', [Cl.uint(amount), Cl.principal(dst), Cl.stringAscii(txid)], sender);
const burn = (amount, src, txid, sender = coordinator) =>
  call('burn!', [Cl.uint(amount), Cl.principal(src), Cl.stringAscii(txid)], sender);
const balance = (who) => read('get-balance', [Cl.principal(who)]);
const record = (amount, who) => Cl.some(Cl.tuple({ amount: Cl.uint(amount), principal: Cl.principal(who) }));

beforeEach(() => {
  // Each test starts from a fresh deployment with the coordinator set.
  deployed += 1;
  contract = `sbtc-alpha-${deployed}`;
  const r = simnet.deployContract(
    contract,
    simnet.getContractSource('sbtc-alpha'),
    { clarityVersion: 2 },
    owner,
  );
  assert.deepEqual(r.result, Cl.bool(true));
  assert.deepEqual(
    call('set-coordinator-data', [Cl.tuple({ addr: Cl.principal(coordinator), key: KEY })], owner),
    ok(Cl.bool(true)),
  );
});

test('SIP-010 metadata', () => {
  assert.deepEqual(read('get-name'), ok(Cl.stringAscii('sBTC')));
  assert.deepEqual(read('get-symbol'), ok(Cl.stringAscii('sBTC')));
  assert.deepEqual(read('get-decimals'), ok(Cl.uint(8)));
  assert.deepEqual(read('get-token-uri'), ok(Cl.none()));
  assert.deepEqual(read('get-total-supply'), ok(Cl.uint(0)));
});

test('the coordinator mints once per bitcoin txid', () => {
  assert.deepEqual(read('was-minted', [Cl.stringAscii(TXID_A)]), Cl.bool(false));
  assert.deepEqual(mint(150000, alice, TXID_A), ok(Cl.bool(true)));
  assert.deepEqual(balance(alice), ok(Cl.uint(150000)));
  assert.deepEqual(read('was-minted', [Cl.stringAscii(TXID_A)]), Cl.bool(true));
  assert.deepEqual(read('get-mint', [Cl.stringAscii(TXID_A)]), record(150000, alice));
  assert.deepEqual(read('get-mint', [Cl.stringAscii(TXID_B)]), Cl.none());
  // A mint is not a burn.
  assert.deepEqual(read('get-burn', [Cl.stringAscii(TXID_A)]), Cl.none());
  // Replay: same txid, even another amount or recipient, is refused and changes nothing.
  assert.deepEqual(mint(150000, alice, TXID_A), err(ERR.ALREADY_MINTED));
  assert.deepEqual(mint(5, bob, TXID_A), err(ERR.ALREADY_MINTED));
  assert.deepEqual(read('get-mint', [Cl.stringAscii(TXID_A)]), record(150000, alice));
  assert.deepEqual(balance(alice), ok(Cl.uint(150000)));
  assert.deepEqual(balance(bob), ok(Cl.uint(0)));
  assert.deepEqual(read('get-total-supply'), ok(Cl.uint(150000)));
  // Minting into a contract principal works too, and is recorded as such.
  assert.deepEqual(mint(7, `${owner}.sbtc-alpha`, TXID_B), ok(Cl.bool(true)));
  assert.deepEqual(read('get-mint', [Cl.stringAscii(TXID_B)]), record(7, `${owner}.sbtc-alpha`));
});

test('mint error paths', () => {
  assert.deepEqual(mint(1, alice, TXID_A, alice), err(ERR.NOT_COORDINATOR));
  assert.deepEqual(mint(1, alice, TXID_A, owner), err(ERR.NOT_COORDINATOR));
  assert.deepEqual(mint(0, alice, TXID_A), err(ERR.INVALID_AMOUNT));
  assert.deepEqual(mint(1, alice, ''), err(ERR.INVALID_TXID));
  // Above the 21M BTC cap: refused, and the txid is not marked (the call rolled back).
  assert.deepEqual(mint(2100000000000001, alice, TXID_A), err(ERR.SUPPLY_CAP));
  assert.deepEqual(read('was-minted', [Cl.stringAscii(TXID_A)]), Cl.bool(false));
  assert.deepEqual(read('get-mint', [Cl.stringAscii(TXID_A)]), Cl.none());
  assert.deepEqual(mint(2100000000000000, alice, TXID_A), ok(Cl.bool(true)));
  assert.deepEqual(mint(1, alice, TXID_B), err(ERR.SUPPLY_CAP));
});

test('the coordinator burns once per bitcoin txid', () => {
  mint(1000, alice, TXID_A);
  assert.deepEqual(burn(400, alice, TXID_B), ok(Cl.bool(true)));
  assert.deepEqual(balance(alice), ok(Cl.uint(600)));
  assert.deepEqual(read('was-burned', [Cl.stringAscii(TXID_B)]), Cl.bool(true));
  // The burn records its amount and whose tokens were burned.
  assert.deepEqual(read('get-burn', [Cl.stringAscii(TXID_B)]), record(400, alice));
  assert.deepEqual(read('get-mint', [Cl.stringAscii(TXID_B)]), Cl.none());
  assert.deepEqual(burn(400, alice, TXID_B), err(ERR.ALREADY_BURNED));
  assert.deepEqual(balance(alice), ok(Cl.uint(600)));
  assert.deepEqual(read('get-total-supply'), ok(Cl.uint(600)));
  // A refused replay, even from another source, leaves the record as it was.
  mint(50, bob, TXID_B);
  assert.deepEqual(burn(50, bob, TXID_B), err(ERR.ALREADY_BURNED));
  assert.deepEqual(read('get-burn', [Cl.stringAscii(TXID_B)]), record(400, alice));
});

test('burn error paths', () => {
  mint(1000, alice, TXID_A);
  assert.deepEqual(burn(1, alice, TXID_B, alice), err(ERR.NOT_COORDINATOR));
  assert.deepEqual(burn(0, alice, TXID_B), err(ERR.INVALID_AMOUNT));
  assert.deepEqual(burn(1, alice, ''), err(ERR.INVALID_TXID));
  // More than the balance: refused, txid not marked, balance untouched.
  assert.deepEqual(burn(1001, alice, TXID_B), err(ERR.INSUFFICIENT_BALANCE));
  assert.deepEqual(read('was-burned', [Cl.stringAscii(TXID_B)]), Cl.bool(false));
  assert.deepEqual(read('get-burn', [Cl.stringAscii(TXID_B)]), Cl.none());
  assert.deepEqual(balance(alice), ok(Cl.uint(1000)));
});

test('transfer, and trading halted by the coordinator', () => {
  mint(1000, alice, TXID_A);
  const transfer = (amount, from, to, sender) =>
    call('transfer', [Cl.uint(amount), Cl.principal(from), Cl.principal(to), Cl.none()], sender);
  assert.deepEqual(transfer(100, alice, bob, alice), ok(Cl.bool(true)));
  assert.deepEqual(
    call('transfer', [Cl.uint(1), Cl.principal(alice), Cl.principal(bob), Cl.some(Cl.bufferFromHex('00ff'))], alice),
    ok(Cl.bool(true)),
  );
  assert.deepEqual(balance(bob), ok(Cl.uint(101)));
  assert.deepEqual(transfer(1, alice, bob, bob), err(ERR.NOT_TOKEN_OWNER));
  assert.deepEqual(transfer(0, alice, bob, alice), err(ERR.INVALID_AMOUNT));
  assert.deepEqual(transfer(5000, alice, bob, alice), err(ERR.INSUFFICIENT_BALANCE));
  assert.deepEqual(call('set-trading-halted', [Cl.bool(true)], alice), err(ERR.NOT_COORDINATOR));
  assert.deepEqual(call('set-trading-halted', [Cl.bool(true)], coordinator), ok(Cl.bool(true)));
  assert.deepEqual(read('get-trading-halted'), Cl.bool(true));
  assert.deepEqual(transfer(1, alice, bob, alice), err(ERR.TRADING_HALTED));
  // Halting trading does not stop the peg.
  assert.deepEqual(mint(1, bob, TXID_B), ok(Cl.bool(true)));
  call('set-trading-halted', [Cl.bool(false)], coordinator);
  assert.deepEqual(transfer(1, alice, bob, alice), ok(Cl.bool(true)));
});

test('peg wallet key: coordinator only', () => {
  assert.deepEqual(read('get-bitcoin-wallet-public-key'), Cl.none());
  assert.deepEqual(call('set-bitcoin-wallet-public-key', [KEY], alice), err(ERR.NOT_COORDINATOR));
  assert.deepEqual(call('set-bitcoin-wallet-public-key', [KEY], owner), err(ERR.NOT_COORDINATOR));
  assert.deepEqual(call('set-bitcoin-wallet-public-key', [KEY], coordinator), ok(Cl.bool(true)));
  assert.deepEqual(read('get-bitcoin-wallet-public-key'), Cl.some(KEY));
});

test('owner-only configuration', () => {
  const signer = Cl.tuple({
    addr: Cl.principal(bob),
    'public-key': KEY,
    'key-ids': Cl.list([Cl.uint(1), Cl.uint(2)]),
  });
  const cases = [
    ['set-coordinator-data', [Cl.tuple({ addr: Cl.principal(alice), key: KEY })]],
    ['set-signer-data', [Cl.uint(0), signer]],
    ['delete-signer-data', [Cl.uint(0)]],
    ['set-num-keys', [Cl.uint(5)]],
    ['set-num-signers', [Cl.uint(5)]],
    ['set-threshold', [Cl.uint(3)]],
    ['set-contract-owner', [Cl.principal(alice)]],
  ];
  for (const [fn, args] of cases) {
    assert.deepEqual(call(fn, args, alice), err(ERR.NOT_OWNER), fn);
    assert.deepEqual(call(fn, args, coordinator), err(ERR.NOT_OWNER), fn);
  }
  assert.deepEqual(call('set-signer-data', [Cl.uint(0), signer], owner), ok(Cl.bool(true)));
  assert.deepEqual(read('get-signer-data', [Cl.uint(0)]), Cl.some(signer));
  assert.deepEqual(call('delete-signer-data', [Cl.uint(0)], owner), ok(Cl.bool(true)));
  assert.deepEqual(read('get-signer-data', [Cl.uint(0)]), Cl.none());
  for (const [fn, getter, v] of [['set-num-keys', 'get-num-keys', 5], ['set-num-signers', 'get-num-signers', 4], ['set-threshold', 'get-threshold', 3]]) {
    assert.deepEqual(call(fn, [Cl.uint(v)], owner), ok(Cl.bool(true)));
    assert.deepEqual(read(getter), Cl.uint(v));
  }
  assert.deepEqual(
    read('get-coordinator-data'),
    Cl.some(Cl.tuple({ addr: Cl.principal(coordinator), key: KEY })),
  );
  // Handing over ownership: the old owner loses it.
  assert.deepEqual(call('set-contract-owner', [Cl.principal(alice)], owner), ok(Cl.bool(true)));
  assert.deepEqual(read('get-contract-owner'), Cl.principal(alice));
  assert.deepEqual(call('set-num-keys', [Cl.uint(1)], owner), err(ERR.NOT_OWNER));
  assert.deepEqual(call('set-num-keys', [Cl.uint(1)], alice), ok(Cl.bool(true)));
});

test('a contract with no coordinator refuses every coordinator call', () => {
  simnet.deployContract('sbtc-fresh', simnet.getContractSource('sbtc-alpha'), { clarityVersion: 2 }, owner);
  const r = simnet.callPublicFn('sbtc-fresh', 'mint!', [Cl.uint(1), Cl.principal(alice), Cl.stringAscii(TXID_A)], owner);
  assert.deepEqual(r.result, err(ERR.NOT_COORDINATOR));
});

// --- batches: mint-many! / burn-many! ----------------------------------------
// Each element is a mint!/burn! under the same checks, order, errors and
// replay guard; a failed element takes no effect and leaves the others.

const MAX_BATCH = 200;
const MAX_SUPPLY = 2100000000000000n;
const mintEl = (amount, dst, txid) =>
  Cl.tuple({ amount: Cl.uint(amount), dst: Cl.principal(dst), 'peg-in-txid': Cl.stringAscii(txid) });
const burnEl = (amount, src, txid) =>
  Cl.tuple({ amount: Cl.uint(amount), src: Cl.principal(src), 'peg-out-txid': Cl.stringAscii(txid) });
const mintMany = (els, sender = coordinator) => simnet.callPublicFn(contract, 'mint-many!', [Cl.list(els)], sender);
const burnMany = (els, sender = coordinator) => simnet.callPublicFn(contract, 'burn-many!', [Cl.list(els)], sender);
const results = (...rs) => ok(Cl.list(rs));
const T = (i) => `${i}`.padStart(64, 'c');
const supply = () => read('get-total-supply');
const minted = (txid) => read('get-mint', [Cl.stringAscii(txid)]);
const burned = (txid) => read('get-burn', [Cl.stringAscii(txid)]);

test('mint-many!: one result per element, each with mint!\'s error codes', () => {
  const r = mintMany([
    mintEl(100, alice, T(1)),
    mintEl(0, alice, T(2)), // ERR-INVALID-AMOUNT
    mintEl(200, bob, ''), // ERR-INVALID-TXID
    mintEl(300, bob, T(3)),
    mintEl(2100000000000001n, bob, T(4)), // past the cap on its own
    mintEl(7, `${owner}.sbtc-alpha`, T(5)), // a contract principal
  ]);
  assert.deepEqual(r.result, results(
    ok(Cl.bool(true)), err(ERR.INVALID_AMOUNT), err(ERR.INVALID_TXID), ok(Cl.bool(true)),
    err(ERR.SUPPLY_CAP), ok(Cl.bool(true)),
  ));
  assert.deepEqual(minted(T(1)), record(100, alice));
  assert.deepEqual(minted(T(2)), Cl.none());
  assert.deepEqual(minted(T(3)), record(300, bob));
  assert.deepEqual(minted(T(4)), Cl.none());
  assert.deepEqual(minted(T(5)), record(7, `${owner}.sbtc-alpha`));
  assert.deepEqual(minted(''), Cl.none());
  assert.deepEqual(balance(alice), ok(Cl.uint(100)));
  assert.deepEqual(balance(bob), ok(Cl.uint(300)));
  assert.deepEqual(supply(), ok(Cl.uint(407)));
  // One ft_mint_event per element that took effect, none for the others.
  assert.deepEqual(r.events.map((e) => [e.event, e.data.amount, e.data.recipient]), [
    ['ft_mint_event', '100', alice], ['ft_mint_event', '300', bob], ['ft_mint_event', '7', `${owner}.sbtc-alpha`],
  ]);
});

test('mint-many!: replays inside a batch, across batches and against mint!', () => {
  // Inside one batch: the second use of a txid is refused, the first stands.
  assert.deepEqual(
    mintMany([mintEl(10, alice, T(1)), mintEl(20, bob, T(1)), mintEl(30, bob, T(2))]).result,
    results(ok(Cl.bool(true)), err(ERR.ALREADY_MINTED), ok(Cl.bool(true))),
  );
  assert.deepEqual(minted(T(1)), record(10, alice));
  // Across batches.
  assert.deepEqual(
    mintMany([mintEl(30, bob, T(2)), mintEl(40, bob, T(3))]).result,
    results(err(ERR.ALREADY_MINTED), ok(Cl.bool(true))),
  );
  // A batch's txid against mint!, and mint!'s against a batch.
  assert.deepEqual(mint(10, alice, T(1)), err(ERR.ALREADY_MINTED));
  assert.deepEqual(mint(50, alice, T(4)), ok(Cl.bool(true)));
  assert.deepEqual(mintMany([mintEl(50, bob, T(4))]).result, results(err(ERR.ALREADY_MINTED)));
  // A minted txid can still be burned once (the maps are separate).
  assert.deepEqual(burnMany([burnEl(5, alice, T(1))]).result, results(ok(Cl.bool(true))));
  assert.deepEqual(balance(alice), ok(Cl.uint(55)));
  assert.deepEqual(balance(bob), ok(Cl.uint(70)));
  assert.deepEqual(supply(), ok(Cl.uint(125)));
});

test('mint-many!: the supply cap hit mid-batch: earlier elements stand, later ones fail, nothing half-written', () => {
  assert.deepEqual(mint(MAX_SUPPLY - 100n, alice, T(0)), ok(Cl.bool(true)));
  const r = mintMany([
    mintEl(60, bob, T(1)), // 40 left
    mintEl(50, bob, T(2)), // ERR-SUPPLY-CAP
    mintEl(40, alice, T(3)), // exactly the cap
    mintEl(1, bob, T(4)), // ERR-SUPPLY-CAP
    mintEl(1, bob, T(1)), // the cap is checked before the replay guard, as in mint!
  ]);
  assert.deepEqual(r.result, results(
    ok(Cl.bool(true)), err(ERR.SUPPLY_CAP), ok(Cl.bool(true)), err(ERR.SUPPLY_CAP), err(ERR.SUPPLY_CAP),
  ));
  assert.deepEqual(supply(), ok(Cl.uint(MAX_SUPPLY)));
  assert.deepEqual(minted(T(1)), record(60, bob));
  // The failed elements: no record, no token, the txid still free.
  assert.deepEqual(minted(T(2)), Cl.none());
  assert.deepEqual(minted(T(4)), Cl.none());
  assert.deepEqual(read('was-minted', [Cl.stringAscii(T(2))]), Cl.bool(false));
  assert.deepEqual(balance(bob), ok(Cl.uint(60)));
  assert.deepEqual(r.events.length, 2);
  // Once supply is freed, the failed txid mints.
  assert.deepEqual(burn(50, alice, T(9)), ok(Cl.bool(true)));
  assert.deepEqual(mintMany([mintEl(50, bob, T(2))]).result, results(ok(Cl.bool(true))));
});

test('burn-many!: a burn short of balance mid-batch fails alone and leaves no record', () => {
  mint(1000, alice, T(0));
  mint(300, bob, T(100));
  const r = burnMany([
    burnEl(600, alice, T(1)), // 400 left
    burnEl(500, alice, T(2)), // ERR-INSUFFICIENT-BALANCE
    burnEl(100, bob, T(3)),
    burnEl(400, alice, T(4)), // exactly what is left
    burnEl(0, bob, T(5)), // ERR-INVALID-AMOUNT
    burnEl(1, bob, ''), // ERR-INVALID-TXID
  ]);
  assert.deepEqual(r.result, results(
    ok(Cl.bool(true)), err(ERR.INSUFFICIENT_BALANCE), ok(Cl.bool(true)), ok(Cl.bool(true)),
    err(ERR.INVALID_AMOUNT), err(ERR.INVALID_TXID),
  ));
  assert.deepEqual(burned(T(1)), record(600, alice));
  assert.deepEqual(burned(T(2)), Cl.none());
  assert.deepEqual(read('was-burned', [Cl.stringAscii(T(2))]), Cl.bool(false));
  assert.deepEqual(burned(T(3)), record(100, bob));
  assert.deepEqual(burned(T(4)), record(400, alice));
  assert.deepEqual(burned(T(5)), Cl.none());
  assert.deepEqual(balance(alice), ok(Cl.uint(0)));
  assert.deepEqual(balance(bob), ok(Cl.uint(200)));
  assert.deepEqual(supply(), ok(Cl.uint(200)));
  // The short txid was not consumed: it burns once there is balance.
  mint(500, alice, T(101));
  assert.deepEqual(burnMany([burnEl(500, alice, T(2))]).result, results(ok(Cl.bool(true))));
});

test('burn-many!: the same requester twice, replays inside and across batches and against burn!', () => {
  mint(1000, alice, T(0));
  const r = burnMany([
    burnEl(100, alice, T(1)),
    burnEl(200, alice, T(2)), // the same requester again: both burn
    burnEl(300, alice, T(1)), // ERR-ALREADY-BURNED inside the batch
  ]);
  assert.deepEqual(r.result, results(ok(Cl.bool(true)), ok(Cl.bool(true)), err(ERR.ALREADY_BURNED)));
  // What a deny-mode `SentLe` post condition judges: the burns per
  // principal (simnet does not evaluate post conditions; the real-node and
  // emulator tests do). 300 burned of alice's, <= the 600 the wallet's
  // condition would allow for these three requests.
  const sent = r.events.filter((e) => e.event === 'ft_burn_event').reduce((s, e) => s + BigInt(e.data.amount), 0n);
  assert.equal(sent, 300n);
  assert.ok(r.events.every((e) => e.data.sender === alice));
  assert.deepEqual(burned(T(1)), record(100, alice));
  assert.deepEqual(balance(alice), ok(Cl.uint(700)));
  // Across batches, and against burn!.
  assert.deepEqual(burnMany([burnEl(1, alice, T(2)), burnEl(1, alice, T(3))]).result, results(err(ERR.ALREADY_BURNED), ok(Cl.bool(true))));
  assert.deepEqual(burn(1, alice, T(3)), err(ERR.ALREADY_BURNED));
  assert.deepEqual(burn(1, alice, T(4)), ok(Cl.bool(true)));
  assert.deepEqual(burnMany([burnEl(1, alice, T(4))]).result, results(err(ERR.ALREADY_BURNED)));
  assert.deepEqual(balance(alice), ok(Cl.uint(698)));
});

test('batches: only the coordinator, and the whole call fails for anyone else', () => {
  mint(1000, alice, T(0));
  for (const sender of [alice, owner, bob]) {
    assert.deepEqual(mintMany([mintEl(1, alice, T(1))], sender).result, err(ERR.NOT_COORDINATOR));
    assert.deepEqual(burnMany([burnEl(1, alice, T(2))], sender).result, err(ERR.NOT_COORDINATOR));
    assert.deepEqual(mintMany([], sender).result, err(ERR.NOT_COORDINATOR));
  }
  assert.deepEqual(minted(T(1)), Cl.none());
  assert.deepEqual(burned(T(2)), Cl.none());
  assert.deepEqual(balance(alice), ok(Cl.uint(1000)));
  // A contract with no coordinator at all.
  simnet.deployContract('sbtc-fresh-batch', simnet.getContractSource('sbtc-alpha'), { clarityVersion: 2 }, owner);
  const r = simnet.callPublicFn('sbtc-fresh-batch', 'mint-many!', [Cl.list([mintEl(1, alice, T(1))])], owner);
  assert.deepEqual(r.result, err(ERR.NOT_COORDINATOR));
});

test('batches: an empty list is (ok ()) and changes nothing', () => {
  mint(10, alice, T(0));
  for (const f of [mintMany, burnMany]) {
    const r = f([]);
    assert.deepEqual(r.result, results());
    assert.deepEqual(r.events, []);
  }
  assert.deepEqual(supply(), ok(Cl.uint(10)));
});

test(`batches: ${MAX_BATCH} elements mint and burn; ${MAX_BATCH + 1} do not type-check`, () => {
  const els = Array.from({ length: MAX_BATCH }, (_, i) => mintEl(i + 1, i % 2 ? alice : bob, T(i)));
  const r = mintMany(els);
  assert.deepEqual(r.result, results(...els.map(() => ok(Cl.bool(true)))));
  const total = (MAX_BATCH * (MAX_BATCH + 1)) / 2;
  assert.deepEqual(supply(), ok(Cl.uint(total)));
  assert.deepEqual(minted(T(MAX_BATCH - 1)), record(MAX_BATCH, alice));
  const burns = Array.from({ length: MAX_BATCH }, (_, i) => burnEl(i + 1, i % 2 ? alice : bob, T(1000 + i)));
  assert.deepEqual(burnMany(burns).result, results(...burns.map(() => ok(Cl.bool(true)))));
  assert.deepEqual(supply(), ok(Cl.uint(0)));
  assert.deepEqual(burned(T(1000 + MAX_BATCH - 1)), record(MAX_BATCH, alice));
  // One more than the list bound: refused before running (a type error).
  const over = [...els, mintEl(1, alice, T(5000))].map((e, i) => (i < MAX_BATCH ? mintEl(1, alice, T(2000 + i)) : e));
  assert.throws(() => mintMany(over));
  assert.deepEqual(minted(T(2000)), Cl.none());
});
