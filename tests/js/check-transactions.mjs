// Reads JSON lines {hex, txid, tampered} on stdin. For each transaction,
// @stacks/transactions must deserialize it, verify its origin signature,
// serialize it back to the same hex and compute the same txid; a tampered
// one must fail. A line with `build` is also built by stacks.js itself from
// that description (makeContractCall: key, nonce, fee, contract, function,
// arguments, deny-mode post conditions), and the two must be the same bytes:
// our encoding proven against an independent one. Prints one JSON summary
// line: {checked, built, failures}.
import { Cl, Pc, deserializeTransaction, makeContractCall } from '@stacks/transactions';
import { createInterface } from 'node:readline';

// A Clarity value from its JSON description: {uint}, {int}, {ascii},
// {principal}, {bool}, {buffer}, {list: [...]}, {tuple: {name: ...}}.
function cv(d) {
  if ('uint' in d) return Cl.uint(BigInt(d.uint));
  if ('int' in d) return Cl.int(BigInt(d.int));
  if ('ascii' in d) return Cl.stringAscii(d.ascii);
  if ('principal' in d) return Cl.principal(d.principal);
  if ('bool' in d) return Cl.bool(d.bool);
  if ('buffer' in d) return Cl.bufferFromHex(d.buffer);
  if ('list' in d) return Cl.list(d.list.map(cv));
  if ('tuple' in d) return Cl.tuple(Object.fromEntries(Object.entries(d.tuple).map(([k, v]) => [k, cv(v)])));
  throw new Error(`unknown value description ${JSON.stringify(d)}`);
}

// A fungible-token post condition: {principal, code: 'lte'|'eq'|'gte', amount, asset: 'ADDR.name::token'}.
function pc(d) {
  const p = Pc.principal(d.principal);
  const amount = BigInt(d.amount);
  const w = { lte: p.willSendLte(amount), eq: p.willSendEq(amount), gte: p.willSendGte(amount) }[d.code];
  const [contract, token] = d.asset.split('::');
  return w.ft(contract, token);
}

async function build(b) {
  const [contractAddress, contractName] = b.contract.split('.');
  const tx = await makeContractCall({
    contractAddress,
    contractName,
    functionName: b.function,
    functionArgs: b.args.map(cv),
    senderKey: b.key,
    network: b.network,
    nonce: BigInt(b.nonce),
    fee: BigInt(b.fee),
    postConditionMode: 'deny',
    postConditions: b.postConditions.map(pc),
    validateWithAbi: false,
  });
  return tx.serialize();
}

const failures = [];
let checked = 0;
let built = 0;
const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of rl) {
  if (!line.trim()) continue;
  const c = JSON.parse(line);
  checked += 1;
  let outcome;
  try {
    const tx = deserializeTransaction(c.hex);
    tx.verifyOrigin();
    const again = tx.serialize();
    const txid = tx.txid();
    if (again !== c.hex) outcome = `re-serialized differently: ${again}`;
    else if (txid !== c.txid) outcome = `txid ${txid}, expected ${c.txid}`;
    else outcome = 'ok';
  } catch (e) {
    outcome = `rejected: ${e.message}`;
  }
  if (c.build && outcome === 'ok') {
    try {
      const theirs = await build(c.build);
      built += 1;
      if (theirs !== c.hex) outcome = `stacks.js builds ${theirs}`;
    } catch (e) {
      outcome = `stacks.js cannot build it: ${e.message}`;
    }
  }
  const good = c.tampered ? outcome !== 'ok' : outcome === 'ok';
  if (!good) failures.push({ index: checked - 1, tampered: c.tampered, outcome, hex: c.hex });
}
console.log(JSON.stringify({ checked, built, failures }));
