;; sBTC alpha: a SIP-010 token, 8 decimals, minted for peg-ins and burned for
;; peg-outs by the coordinator only. Each Bitcoin txid can be minted once and
;; burned once: a replayed or duplicated mint or burn fails with its own
;; error code, and the read-only `was-minted` / `was-burned` tell the
;; coordinator whether its transaction took effect. `get-mint` / `get-burn`
;; tell the signers what took effect: the amount and the principal (who
;; received the mint, whose tokens were burned), so a signer pays a peg-out
;; only for a burn of the right amount from the requester.

(impl-trait .sip-010-trait.sip-010-trait)

;; 21,000,000 BTC in satoshis.
(define-constant MAX-SUPPLY u2100000000000000)
(define-fungible-token sbtc MAX-SUPPLY)

;; Error codes: distinct from each other and from the native ft-* codes (u1-u3).
(define-constant ERR-NOT-OWNER (err u1001))
(define-constant ERR-NOT-COORDINATOR (err u1002))
(define-constant ERR-INVALID-AMOUNT (err u1003))
(define-constant ERR-ALREADY-MINTED (err u1004))
(define-constant ERR-ALREADY-BURNED (err u1005))
(define-constant ERR-SUPPLY-CAP (err u1006))
(define-constant ERR-INSUFFICIENT-BALANCE (err u1007))
(define-constant ERR-NOT-TOKEN-OWNER (err u1008))
(define-constant ERR-TRADING-HALTED (err u1009))
(define-constant ERR-INVALID-TXID (err u1010))

(define-data-var contract-owner principal tx-sender)
(define-data-var coordinator (optional {addr: principal, key: (buff 33)}) none)
(define-data-var bitcoin-wallet-public-key (optional (buff 33)) none)
(define-data-var trading-halted bool false)
(define-data-var num-keys uint u0)
(define-data-var num-signers uint u0)
(define-data-var threshold uint u0)

(define-map signers uint {addr: principal, public-key: (buff 33), key-ids: (list 4000 uint)})
;; Bitcoin txid (hex, display order) -> amount minted / burned, and the
;; principal minted to (dst) / burned from (src).
(define-map minted (string-ascii 72) {amount: uint, principal: principal})
(define-map burned (string-ascii 72) {amount: uint, principal: principal})

(define-private (is-owner)
  (is-eq tx-sender (var-get contract-owner)))

(define-private (is-coordinator)
  (match (var-get coordinator)
    c (is-eq tx-sender (get addr c))
    false))

;; --- owner -------------------------------------------------------------------

(define-public (set-contract-owner (owner principal))
  (begin
    (asserts! (is-owner) ERR-NOT-OWNER)
    (ok (var-set contract-owner owner))))

(define-public (set-coordinator-data (data {addr: principal, key: (buff 33)}))
  (begin
    (asserts! (is-owner) ERR-NOT-OWNER)
    (ok (var-set coordinator (some data)))))

(define-public (set-signer-data (id uint) (data {addr: principal, public-key: (buff 33), key-ids: (list 4000 uint)}))
  (begin
    (asserts! (is-owner) ERR-NOT-OWNER)
    (ok (map-set signers id data))))

(define-public (delete-signer-data (id uint))
  (begin
    (asserts! (is-owner) ERR-NOT-OWNER)
    (ok (map-delete signers id))))

(define-public (set-num-keys (n uint))
  (begin
    (asserts! (is-owner) ERR-NOT-OWNER)
    (ok (var-set num-keys n))))

(define-public (set-num-signers (n uint))
  (begin
    (asserts! (is-owner) ERR-NOT-OWNER)
    (ok (var-set num-signers n))))

(define-public (set-threshold (n uint))
  (begin
    (asserts! (is-owner) ERR-NOT-OWNER)
    (ok (var-set threshold n))))

;; --- coordinator -------------------------------------------------------------

(define-public (set-bitcoin-wallet-public-key (public-key (buff 33)))
  (begin
    (asserts! (is-coordinator) ERR-NOT-COORDINATOR)
    (ok (var-set bitcoin-wallet-public-key (some public-key)))))

(define-public (set-trading-halted (halted bool))
  (begin
    (asserts! (is-coordinator) ERR-NOT-COORDINATOR)
    (ok (var-set trading-halted halted))))

(define-public (mint! (amount uint) (dst principal) (peg-in-txid (string-ascii 72)))
  (begin
    (asserts! (is-coordinator) ERR-NOT-COORDINATOR)
    (asserts! (> amount u0) ERR-INVALID-AMOUNT)
    (asserts! (> (len peg-in-txid) u0) ERR-INVALID-TXID)
    ;; Checked here: past the cap ft-mint? is a runtime error, not an err.
    (asserts! (<= amount (- MAX-SUPPLY (ft-get-supply sbtc))) ERR-SUPPLY-CAP)
    (asserts! (map-insert minted peg-in-txid {amount: amount, principal: dst}) ERR-ALREADY-MINTED)
    (unwrap! (ft-mint? sbtc amount dst) ERR-SUPPLY-CAP)
    (ok true)))

(define-public (burn! (amount uint) (src principal) (peg-out-txid (string-ascii 72)))
  (begin
    (asserts! (is-coordinator) ERR-NOT-COORDINATOR)
    (asserts! (> amount u0) ERR-INVALID-AMOUNT)
    (asserts! (> (len peg-out-txid) u0) ERR-INVALID-TXID)
    (asserts! (map-insert burned peg-out-txid {amount: amount, principal: src}) ERR-ALREADY-BURNED)
    (unwrap! (ft-burn? sbtc amount src) ERR-INSUFFICIENT-BALANCE)
    (ok true)))

;; --- batches ----------------------------------------------------------------
;; `mint-many!` / `burn-many!`: up to 200 `mint!` / `burn!` in one call, so one
;; transaction (one nonce) carries a whole batch. Each element goes through
;; exactly the checks of `mint!` / `burn!`, in the same order, with the same
;; error codes and the same `minted` / `burned` replay guard (a txid twice in
;; one batch: the second is ERR-ALREADY-MINTED / ERR-ALREADY-BURNED). The
;; result is `(ok (list ...))`, one response per element, in order. A failed
;; element takes no effect at all and leaves the others standing: an err from
;; a private function does not roll anything back, so `mint-one` / `burn-one`
;; check everything (the supply left, the replay guard, the balance) before
;; their first write, and their writes cannot fail once the checks passed.
;; Only the coordinator may call either; anyone else gets ERR-NOT-COORDINATOR
;; for the whole call (and nothing happens). An empty list is allowed and does
;; nothing: `(ok ())`.

(define-private (mint-one (m {amount: uint, dst: principal, peg-in-txid: (string-ascii 72)}))
  (let ((amount (get amount m))
        (dst (get dst m))
        (peg-in-txid (get peg-in-txid m)))
    (asserts! (> amount u0) ERR-INVALID-AMOUNT)
    (asserts! (> (len peg-in-txid) u0) ERR-INVALID-TXID)
    (asserts! (<= amount (- MAX-SUPPLY (ft-get-supply sbtc))) ERR-SUPPLY-CAP)
    (asserts! (is-none (map-get? minted peg-in-txid)) ERR-ALREADY-MINTED)
    ;; All checks passed: the mint cannot fail now (amount > 0, within the
    ;; cap), and the record goes in only after it.
    (unwrap! (ft-mint? sbtc amount dst) ERR-SUPPLY-CAP)
    (map-set minted peg-in-txid {amount: amount, principal: dst})
    (ok true)))

(define-private (burn-one (b {amount: uint, src: principal, peg-out-txid: (string-ascii 72)}))
  (let ((amount (get amount b))
        (src (get src b))
        (peg-out-txid (get peg-out-txid b)))
    (asserts! (> amount u0) ERR-INVALID-AMOUNT)
    (asserts! (> (len peg-out-txid) u0) ERR-INVALID-TXID)
    (asserts! (is-none (map-get? burned peg-out-txid)) ERR-ALREADY-BURNED)
    ;; The balance is checked here, not left to ft-burn?: in `burn!` its
    ;; failure rolls the whole call back, here it would leave the record.
    (asserts! (<= amount (ft-get-balance sbtc src)) ERR-INSUFFICIENT-BALANCE)
    (unwrap! (ft-burn? sbtc amount src) ERR-INSUFFICIENT-BALANCE)
    (map-set burned peg-out-txid {amount: amount, principal: src})
    (ok true)))

(define-public (mint-many! (mints (list 200 {amount: uint, dst: principal, peg-in-txid: (string-ascii 72)})))
  (begin
    (asserts! (is-coordinator) ERR-NOT-COORDINATOR)
    (ok (map mint-one mints))))

(define-public (burn-many! (burns (list 200 {amount: uint, src: principal, peg-out-txid: (string-ascii 72)})))
  (begin
    (asserts! (is-coordinator) ERR-NOT-COORDINATOR)
    (ok (map burn-one burns))))

;; --- SIP-010 -----------------------------------------------------------------

(define-public (transfer (amount uint) (sender principal) (recipient principal) (memo (optional (buff 34))))
  (begin
    (asserts! (not (var-get trading-halted)) ERR-TRADING-HALTED)
    (asserts! (is-eq tx-sender sender) ERR-NOT-TOKEN-OWNER)
    (asserts! (> amount u0) ERR-INVALID-AMOUNT)
    (unwrap! (ft-transfer? sbtc amount sender recipient) ERR-INSUFFICIENT-BALANCE)
    (match memo m (print m) 0x)
    (ok true)))

(define-read-only (get-name) (ok "sBTC"))
(define-read-only (get-symbol) (ok "sBTC"))
(define-read-only (get-decimals) (ok u8))
(define-read-only (get-balance (who principal)) (ok (ft-get-balance sbtc who)))
(define-read-only (get-total-supply) (ok (ft-get-supply sbtc)))
(define-read-only (get-token-uri) (ok none))

;; --- read-only ---------------------------------------------------------------

(define-read-only (was-minted (peg-in-txid (string-ascii 72)))
  (is-some (map-get? minted peg-in-txid)))

(define-read-only (was-burned (peg-out-txid (string-ascii 72)))
  (is-some (map-get? burned peg-out-txid)))

;; The mint of a peg-in: its amount and the principal it was minted to.
(define-read-only (get-mint (peg-in-txid (string-ascii 72)))
  (map-get? minted peg-in-txid))

;; The burn of a peg-out request: its amount and the principal burned from.
(define-read-only (get-burn (peg-out-txid (string-ascii 72)))
  (map-get? burned peg-out-txid))

(define-read-only (get-contract-owner) (var-get contract-owner))
(define-read-only (get-coordinator-data) (var-get coordinator))
(define-read-only (get-bitcoin-wallet-public-key) (var-get bitcoin-wallet-public-key))
(define-read-only (get-trading-halted) (var-get trading-halted))
(define-read-only (get-signer-data (id uint)) (map-get? signers id))
(define-read-only (get-num-keys) (var-get num-keys))
(define-read-only (get-num-signers) (var-get num-signers))
(define-read-only (get-threshold) (var-get threshold))
