#include "proxy/relay_loop.h"

#include <openssl/err.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstring>

#include <deque>
#include <unordered_map>

#include "protocol/backend.h"
#include "protocol/frame_relay.h"
#include "protocol/frontend.h"
#include "protocol/message_type.h"
#include "proxy/alert_hub.h"
#include "proxy/audit_log.h"
#include "proxy/log.h"
#include "rules/mask_value.h"
#include "rules/prepared_names.h"
#include "rules/rewriter.h"
#include "rules/session_settings.h"

namespace pgcloak::proxy {

namespace {

namespace fe = protocol::fe;
namespace be = protocol::be;
using protocol::Buffer;
using protocol::Bytes;
using protocol::printable_type;
using Clock = std::chrono::steady_clock;

// One receive: large enough that a bulk result moves in few system calls.
constexpr size_t rx_size = size_t{64} * 1024;
// A side is not read while this much is still owed to the other side, so a
// slow reader stops the fast writer: per session at most about
// 2 x (out_cap + rx_size) bytes are buffered.
constexpr size_t out_cap = size_t{64} * 1024;
// Batched I/O (io_batch.h): operations per io_uring call, and the slots that
// batched reads land in. Most reads are one small message; a full slot
// leaves the side readable and the pump goes on with rx_size reads.
constexpr unsigned batch_entries = 128;
constexpr unsigned batch_slots = 64;
constexpr size_t batch_slot_size = size_t{16} * 1024;
// Reads per connection per loop pass before others get a turn.
constexpr int pass_budget = 16;
// How long a closing connection may take to flush what it owes the client.
constexpr auto close_linger = std::chrono::seconds(5);
constexpr auto tick_interval = std::chrono::milliseconds(500);
// Statement analyses kept per relay loop (rules/decision_cache.h).
constexpr size_t decision_cache_bytes = size_t{16} << 20;

constexpr auto make_type_table(std::initializer_list<uint8_t> types) {
  std::array<bool, 256> t{};
  for (uint8_t c : types) t[c] = true;
  return t;
}

// Message types a client may send once authenticated (protocol docs,
// "Message Formats"). Anything else is refused: pgcloak never forwards a
// message it cannot classify.
constexpr auto frontend_types = make_type_table(
    {fe::bind, fe::close, fe::copy_data, fe::copy_done, fe::copy_fail, fe::describe, fe::execute, fe::flush,
     fe::function_call, fe::parse, fe::query, fe::sync, fe::terminate});
constexpr auto backend_types = make_type_table({be::authentication,
                                                be::backend_key_data,
                                                be::bind_complete,
                                                be::close_complete,
                                                be::command_complete,
                                                be::copy_data,
                                                be::copy_done,
                                                be::copy_in_response,
                                                be::copy_out_response,
                                                be::copy_both_response,
                                                be::data_row,
                                                be::empty_query_response,
                                                be::error_response,
                                                be::function_call_response,
                                                be::negotiate_protocol_version,
                                                be::no_data,
                                                be::notice_response,
                                                be::notification_response,
                                                be::parameter_description,
                                                be::parameter_status,
                                                be::parse_complete,
                                                be::portal_suspended,
                                                be::ready_for_query,
                                                be::row_description});

constexpr uint8_t terminate_message[] = {'X', 0, 0, 0, 4};

// What a refused statement is replaced with on its way to PostgreSQL: text
// that fails to parse, so PostgreSQL itself reports an error for it and its
// transaction and pipeline state stay exactly what they are after any
// failed statement (aborted transaction block, skip until Sync). The
// ErrorResponse that comes back is then swapped for pgcloak's refusal.
constexpr std::string_view poison_sql = "pgcloak_refused_statement";

// DETAIL texts that can carry row values: "Failing row contains (...)" and
// "Key (email)=(...) already exists." (MASKING-THREATS.md, class 6).
bool detail_may_hold_values(std::string_view d) {
  return d.find("Failing row contains") != std::string_view::npos || d.find(")=(") != std::string_view::npos;
}

// Whether a masked session's client may see this NoticeResponse. DEBUG and
// LOG messages (client_min_messages below NOTICE, trace_sort, the
// debug_print_* settings) describe the statement PostgreSQL ran, which is
// the rewritten one with the masking expressions and their keys, or how
// its hidden values sort: only NOTICE, WARNING and INFO pass. The
// non-localized severity ('V', PostgreSQL 9.6 and later) decides; a notice
// without it does not pass.
bool client_notice(Bytes body) {
  auto nr = protocol::NoticeResponse::decode(body);
  if (!nr) return false;
  const std::string* v = nr->find(protocol::field::severity_nonlocalized);
  return v != nullptr && (*v == "NOTICE" || *v == "WARNING" || *v == "INFO");
}

enum class Io { ok, would_block, eof, error };

}  // namespace

// One relayed session: the client side, the PostgreSQL side, what each is
// owed, and the protocol state the proxy must track between them.
class RelayConnection : public std::enable_shared_from_this<RelayConnection> {
 public:
  RelayConnection(RelayLoop& loop, RelayStart start);
  ~RelayConnection();
  RelayConnection(const RelayConnection&) = delete;
  RelayConnection& operator=(const RelayConnection&) = delete;

  bool open();  // registers with epoll and forwards what start-up left over
  void on_event(bool upstream_side, uint32_t events);
  // Returns true when it stopped on its budget with work left.
  bool pump();
  void drain();
  void terminate_with(const Error& reason);
  void tick(Clock::time_point now);
  void close_now();
  bool closed() const { return closed_; }
  // Strict audit: records up to `durable` are on disk; release what waited.
  void audit_durable(uint64_t durable);

  // --- batched I/O (RelayLoop::pump_ready, flush_sends) ---
  // Queues a read for each plaintext side the pump would read now, into the
  // loop's slots from `slot` on; returns how many slots it used (0-2).
  // `conn_tag` identifies this session in the completions.
  unsigned stage_reads(IoBatch& batch, uint64_t conn_tag, uint8_t* slot, unsigned slots_left);
  void staged_result(uint64_t side_tag, ssize_t res);
  // After the pump: a staged read it did not take is copied out of the slot.
  void keep_staged();
  // Queues the sends flush() deferred; `conn_tag` identifies this session
  // in the completions.
  void queue_sends(IoBatch& batch, uint64_t conn_tag);
  void sent(bool upstream_side, ssize_t res);
  // After every completion of a batch: a failed send ends the session.
  void settle_sends();
  uint64_t epoch = 0;  // the loop's wake-up that last listed this session as ready

  // The epoll cookie of each side: the connection plus which side.
  struct Tag {
    RelayConnection* conn;
    bool upstream;
  };

 private:
  struct Side {
    int fd = -1;
    SslPtr ssl;
    bool readable = true;  // not known to be drained (edge-triggered)
    bool writable = true;  // not known to be full
    bool read_wants_write = false;
    bool write_wants_read = false;
    bool epollout = false;     // EPOLLOUT currently requested
    bool dead = false;         // read EOF or an error; nothing more is read or written
    bool tls_drained = false;  // TLS: the last read from the socket found it empty (tls_read_probe_result)
    // Batched I/O: a read done in the loop's batch for the pump to take.
    const uint8_t* staged_data = nullptr;
    ssize_t staged_res = 0;
    bool staged = false;
    size_t staged_cap = 0;
    Buffer carry;              // a staged read the pump did not take: its bytes come first
    bool send_queued = false;  // flush() left the send to the loop's batch
    size_t send_asked = 0;     // bytes in the batched send
    int send_error = 0;        // the batched send failed (errno); settle_sends ends the session
    // Batched I/O with TLS (the client side): OpenSSL reads and writes
    // memory BIOs, and the loop moves the ciphertext to and from the socket
    // in its batches like any other bytes. Null: OpenSSL uses the socket.
    BIO* mem_in = nullptr;  // owned by ssl
    BIO* mem_out = nullptr;
    Buffer cipher;  // ciphertext owed to the socket
    size_t cipher_begin = 0;
    bool sock_drained = false;  // memory BIOs: the socket's last read returned less than asked
    bool sock_eof = false;      // memory BIOs: the socket reached end of stream
    bool eof_fed = false;       // ... and OpenSSL was told so
    int sock_err = 0;           // memory BIOs: the socket's last read failed (errno)
    bool mem() const { return mem_in != nullptr; }
    size_t cipher_pending() const { return cipher.size() - cipher_begin; }
    // Something to send: plaintext not held back, or ciphertext.
    bool has_output() const { return sendable_end() > out_begin || cipher_pending() > 0; }
    Buffer out;  // owed to this side
    size_t out_begin = 0;
    Tag tag{};
    // Strict audit: (offset in out, record seq). Bytes from offset on are
    // not sent until that record is durable; offsets only grow.
    std::deque<std::pair<size_t, uint64_t>> holds;
    size_t pending() const { return out.size() - out_begin + cipher.size() - cipher_begin; }
    size_t sendable_end() const { return holds.empty() ? out.size() : holds.front().first; }
    void append(Bytes b) {
      // Offsets in holds index out: it is only emptied without them.
      if (out_begin > 0 && out_begin == out.size() && holds.empty()) {
        out.clear();
        out_begin = 0;
      }
      out.insert(out.end(), b.begin(), b.end());
    }
  };

  // Responses PostgreSQL still owes for messages forwarded while masking was
  // on, in order; used to find the ErrorResponse of a refused (poisoned)
  // statement. Protocol docs, "Extended Query": after an error the backend
  // discards messages until Sync.
  enum class Expect : uint8_t { parse, bind, describe, execute, close, sync, query, function_call };
  // A statement in flight, for its audit record: attached to the
  // expectation of the message that runs it (Query, Execute) or can fail
  // for it (Parse, Bind).
  struct AuditPending {
    std::shared_ptr<const std::string> sql;
    unsigned index = 0;  // statement within a multi-statement Query
    bool extended = false;
    std::string statement_name;
    std::string portal_name;
    std::string decision = "allowed";
    std::string rule;
    std::string message;  // denied: the refusal the client got
    // What the metrics and the console need to know about the statement
    // (class, protected columns); null when not observed or unknown.
    std::shared_ptr<const rules::StatementAudit> profile;
    // Exfiltration detection (docs/detection.md): what the statement reads,
    // its streaming limits, the hash of its literal or parameter values,
    // and, when an alert at its start says so, why it must not run.
    rules::StatementFacts facts;
    rules::StatementWatch watch;
    bool detecting = false;  // facts name protected reads: end and limits are reported
    uint64_t key = 0;
    std::optional<Error> stop;
    uint32_t function_oid = 0;  // FunctionCall
    std::string sqlstate;       // FunctionCall: set when it failed
    Clock::time_point start = Clock::now();
    uint64_t rows = 0;
    uint64_t bytes = 0;
    std::optional<std::vector<std::optional<std::string>>> parameters;
  };
  // What the audit records of later Bind/Execute messages need to know
  // about a prepared statement or portal, as the client defined it.
  struct AuditSource {
    std::shared_ptr<const std::string> sql;
    std::string decision = "allowed";
    std::string rule;
    std::string statement_name;
    std::shared_ptr<const rules::StatementAudit> profile;
    uint64_t key = 0;  // hash of the Bind values (detection)
    std::optional<std::vector<std::optional<std::string>>> parameters;
    bool defined = false;  // set by set_audit_source (an unnamed one may be all empty)
  };
  struct Expectation {
    Expect kind;
    std::optional<Error> refusal;  // set = poisoned: replace its error with this
    std::shared_ptr<AuditPending> audit = {};
    // A Query sent as its decision's output_sql (output masking), and the
    // policy that decided it: its result rows are masked here.
    std::shared_ptr<const rules::StatementDecision> output = {};
    std::shared_ptr<const rules::SessionPolicy> output_policy = {};
    // A Parse binds its name to its text for the records of the Bind and
    // Execute messages behind it at once (they may be in the same write).
    // If PostgreSQL refuses the Parse (42P05 for a name in use, any error),
    // the name keeps what it had: this is put back (restore_binding).
    struct Binding {
      std::string name;
      std::optional<AuditSource> previous;  // nullopt: the name was not defined
    };
    std::optional<Binding> rebind_on_error = {};
  };
  // The unnamed statement and portal (most drivers' only ones) live in
  // members, named ones in maps.
  AuditSource* audit_source(bool statement, const std::string& name);
  void set_audit_source(bool statement, const std::string& name, AuditSource src);
  void forget_audit_source(bool statement, const std::string& name);
  Expectation::Binding binding_of(const std::string& name);
  void restore_binding(const Expectation::Binding& b);
  void client_close(Bytes frame, Buffer& out);

  // data: where the bytes are (buf, or a batched read's slot).
  Io read(Side& s, uint8_t* buf, size_t cap, const uint8_t*& data, size_t& n, int& err);
  Io take_staged(Side& s, const uint8_t*& data, size_t& n, int& err);
  // Memory-BIO TLS (Side::mem): switch a side to it, read plaintext, and
  // move what OpenSSL wrote to the side's ciphertext queue.
  void use_memory_bios(Side& s);
  Io read_tls_mem(Side& s, uint8_t* buf, size_t cap, size_t& n, int& err);
  void absorb_socket_read(Side& s, const uint8_t* data, ssize_t res, size_t asked);
  static void collect_cipher(Side& s);
  Io send_cipher_now(Side& s, int& err);
  // One send(2) of a plaintext socket (EINTR retried): n bytes went, or the
  // socket is full (writable cleared), or it failed.
  static Io send_some(Side& s, const uint8_t* p, size_t len, size_t& n, int& err);
  // Whether the pump reads this side now (the same tests as pump()).
  bool reads_client() const {
    const bool audit_blocked = audit_ && !audit_.fail_closed && !audit_.log->accepting();
    return !closing_ && !client_.dead && client_.readable && upstream_.pending() < out_cap &&
           !audit_blocked && !cancel_in_flight_;
  }
  bool reads_upstream() const {
    return !closing_ && !upstream_.dead && upstream_.readable && client_.pending() < out_cap;
  }
  void refresh_policy();
  void client_frame(uint8_t type, Bytes frame, Buffer& out);
  void server_frame(uint8_t type, Bytes frame, Buffer& out);
  void on_server_header(uint8_t type, uint32_t length);
  // --- audit (docs/audit.md) ---
  // profile: the statement's analysis when already known (Bind: from its
  // Parse), else looked up when observing.
  std::shared_ptr<AuditPending> audit_pending(std::shared_ptr<const std::string> sql, bool extended,
                                              std::shared_ptr<const rules::StatementAudit> profile = nullptr);
  void audit_emit(AuditPending& p, std::string_view tag, std::string_view sqlstate);
  // --- metrics and console (docs/metrics.md) ---
  void observe_start(AuditPending& p);
  void observe_emit(AuditPending& p, std::string_view sqlstate);
  uint64_t masked_values(const rules::StatementAudit& profile, uint64_t rows);
  // --- exfiltration detection (docs/detection.md) ---
  // can_refuse: the statement has not been forwarded yet, so a stopping
  // action refuses it instead of cancelling it.
  void detect_start(AuditPending& p, bool can_refuse);
  void detect_limit(AuditPending& p);
  void detect_end(AuditPending& p);
  void act_on(const std::vector<rules::Alert>& alerts, AuditPending* running, bool can_refuse);
  void cut_statement(const Error& e);
  void cancel_done();
  void audit_statement_done(std::string_view tag, std::string_view sqlstate);
  bool audit_refusing() const;
  Error audit_refusal() const;
  void audit_hold_ready();
  void client_query(Bytes frame, Buffer& out);
  void client_parse(Bytes frame, Buffer& out);
  void client_bind(Bytes frame, Buffer& out);
  void client_execute(Bytes frame, Buffer& out);
  void client_function_call(Bytes frame, Buffer& out);
  void poison(Expect kind, const Error& refusal, std::shared_ptr<AuditPending> audit, Buffer& out,
              const std::string& statement_name = {});
  void note_ddl();
  void result_columns(Bytes body);
  uint32_t backstop_columns(Bytes body, const rules::SessionPolicy& policy,
                            const rules::StatementDecision* plan);
  void backstop_row(Bytes frame, Buffer& out);
  void note_parameter(Bytes body);
  // The head Query runs as its output_sql and its RowDescription has not
  // been seen.
  bool output_unchecked() const {
    return !output_checked_ && !expect_.empty() && expect_.front().output != nullptr;
  }
  std::shared_ptr<const rules::StatementDecision> decide(std::string_view sql);
  // defer: with batched I/O, a plaintext side's send is left to the loop's
  // batch (flush_sends) instead of being made now.
  Io flush(Side& s, int& err, bool defer = false);
  void update_interest(Side& s);
  bool from_client(Bytes chunk);
  bool from_server(Bytes chunk);
  void client_gone();
  // Session pooling: whether the upstream can serve another client now.
  bool recyclable() const;
  void upstream_gone(bool error, int err);
  void begin_closing();
  bool idle() const {
    return server_at_ready_ && pending_ready_ == 0 && client_frames_.at_boundary() &&
           upstream_.pending() == 0;
  }
  void queue_error(const Error& e) {
    Buffer b;
    protocol::ErrorResponse::from_error(e).encode(b);
    client_.append(b);
  }

  RelayLoop& loop_;
  uint64_t id_;
  Side client_;
  Side upstream_;
  Buffer from_client_start_;
  std::chrono::milliseconds client_idle_;
  std::function<void()> on_closed_;
  std::function<void(DetachedStream)> recycle_;  // session pooling; empty = close the upstream
  bool upstream_is_unix_ = false;
  bool recycle_now_ = false;  // the client left cleanly: close_now() hands the upstream to recycle_
  // Extended-protocol messages forwarded since the last Sync: PostgreSQL may
  // be skipping to a Sync after an error, so the connection cannot be reset.
  bool unsynced_ = false;
  protocol::FrameRelay client_frames_;
  protocol::FrameRelay server_frames_;
  PolicyHooks hooks_;
  uint64_t policy_generation_ = 0;
  bool policy_known_ = false;
  PolicyLookup policy_;
  bool masked_ = false;  // statements are analysed (policy masks something, or is unknown)
  AuditHooks audit_;
  ObserveHooks observe_;
  uint64_t audit_last_seq_ = 0;  // last record this session submitted
  std::unordered_map<std::string, AuditSource> audit_statements_;
  std::unordered_map<std::string, AuditSource> audit_portals_;
  AuditSource audit_unnamed_statement_;
  AuditSource audit_unnamed_portal_;
  // Exfiltration detection: the facts of each open cursor's query, by cursor
  // name, so its FETCHes are charged to what it reads. A cursor that ended
  // with its transaction stays until CLOSE, DISCARD ALL or the bound pushes
  // it out; a FETCH from it fails in PostgreSQL and returns nothing.
  std::unordered_map<std::string, rules::StatementFacts> cursor_facts_;
  static constexpr size_t max_cursor_facts = 256;
  uint64_t audit_statement_count_ = 0;
  uint64_t audit_rows_ = 0;
  uint64_t audit_bytes_ = 0;
  Clock::time_point started_ = Clock::now();
  // Responses are matched to client messages while statements are analysed
  // (masking) or audited.
  bool tracking() const { return masked_ || recording(); }
  // Statements are followed to their end for a record or a metric.
  bool recording() const { return static_cast<bool>(audit_) || static_cast<bool>(observe_); }
  std::deque<Expectation> expect_;
  bool ddl_seen_ = false;  // DDL since the last idle ReadyForQuery
  // Cancel action: the head statement's remaining rows are dropped and its
  // end replaced by the rule's error; while the CancelRequest is on its way
  // the client's next statements wait, so the cancel cannot hit them.
  bool cutting_ = false;
  bool cancel_in_flight_ = false;
  std::optional<Error> terminate_later_;  // a stopping alert arrived mid-message
  // Second line of defence (issue: "RowDescription origins are checked"):
  // columns of the current result that PostgreSQL reports as coming
  // straight from a protected column this policy masks. The rewriter should
  // make this impossible (masked columns are expressions, without origin);
  // if one arrives anyway its values are masked here and counted.
  struct BackstopColumn {
    size_t index;
    rules::MaskSpec spec;
    rules::ColumnType type;
    bool refused;
    bool binary;
    std::string name;
    bool planned;                 // output masking: an output-masked column, masked here by design
    const rules::MaskKeys* keys;  // of the policy that decided the statement
  };
  std::vector<BackstopColumn> backstop_;
  uint64_t backstop_hits_ = 0;
  // Output masking (rules::StatementDecision::output_sql; docs/masking.md):
  // only while both encodings are UTF-8, since the masks in rows must give
  // what the SQL masks give on UTF-8 text. output_checked_: the head
  // Query's RowDescription was checked; rows before it are not sent.
  bool utf8_client_ = false;
  bool utf8_server_ = false;
  // How PostgreSQL reads this session's statements (ParameterStatus;
  // rules/session_settings.h): masked statements are analysed only under
  // the reading pgcloak shares with it (decide).
  rules::SessionReading reading_;
  // A masked session's reading changed in a way pgcloak refuses every route
  // to: nothing more from PostgreSQL reaches the client (note_parameter).
  bool sealed_ = false;
  bool output_checked_ = false;

  // One ReadyForQuery answers each Query, Sync and FunctionCall; counting
  // them tells whether PostgreSQL still owes the client a response.
  uint64_t pending_ready_ = 0;
  bool server_at_ready_ = true;
  uint8_t transaction_status_ = 'I';
  uint8_t last_server_type_ = 0;
  bool terminate_sent_ = false;  // Terminate forwarded or sent to PostgreSQL
  bool draining_ = false;
  bool closing_ = false;  // nothing more is read; flush what the client is owed, then close
  bool closed_ = false;
  Clock::time_point last_activity_ = Clock::now();
  Clock::time_point closing_since_{};
};

RelayConnection::RelayConnection(RelayLoop& loop, RelayStart start)
    : loop_(loop),
      id_(start.session_id),
      from_client_start_(std::move(start.from_client)),
      client_idle_(start.client_idle),
      on_closed_(std::move(start.on_closed)),
      recycle_(std::move(start.recycle_upstream)),
      upstream_is_unix_(start.upstream.is_unix),
      client_frames_(start.max_message_size),
      server_frames_(start.max_message_size),
      hooks_(std::move(start.policy)),
      audit_(std::move(start.audit)),
      observe_(std::move(start.observe)),
      draining_(start.draining) {
  client_.fd = start.client.fd;
  client_.ssl = std::move(start.client.ssl);
  client_.tag = {this, false};
  upstream_.fd = start.upstream.fd;
  upstream_.ssl = std::move(start.upstream.ssl);
  upstream_.tag = {this, true};
  client_.out = std::move(start.to_client);
  utf8_client_ = start.client_encoding == "UTF8";
  utf8_server_ = start.server_encoding == "UTF8";
  reading_.note("client_encoding", start.client_encoding);
  reading_.note("standard_conforming_strings", start.standard_conforming_strings);
  reading_.set_start();
}

RelayConnection::~RelayConnection() {
  close_now();
}

bool RelayConnection::open() {
  // With batched I/O the client's TLS goes through memory BIOs, so its
  // socket reads and writes join the batches. PostgreSQL's side keeps the
  // socket BIO: the upstream pool takes it back as a plain SSL-on-socket.
  if (loop_.batch_ && client_.ssl) use_memory_bios(client_);
  for (Side* s : {&client_, &upstream_}) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = &s->tag;
    if (s->fd < 0 || epoll_ctl(loop_.epoll_fd_, EPOLL_CTL_ADD, s->fd, &ev) != 0) {
      log::error(std::string("relay: cannot watch a session socket: ") + std::strerror(errno), id_);
      close_now();
      return false;
    }
  }
  if (!from_client_start_.empty()) {
    Buffer carried = std::move(from_client_start_);
    if (!from_client(carried)) return true;
  }
  if (draining_) drain();
  return true;
}

// --- I/O --------------------------------------------------------------------

Io RelayConnection::read(Side& s, uint8_t* buf, size_t cap, const uint8_t*& data, size_t& n, int& err) {
  n = 0;
  data = buf;
  if (!s.carry.empty()) {
    n = std::min(cap, s.carry.size());
    std::memcpy(buf, s.carry.data(), n);
    s.carry.erase(s.carry.begin(), s.carry.begin() + static_cast<std::ptrdiff_t>(n));
    return Io::ok;
  }
  if (s.mem()) return read_tls_mem(s, buf, cap, n, err);
  if (s.staged) {
    // -EINTR also marks a read that got no result: it is done directly.
    if (s.staged_res != -EINTR) return take_staged(s, data, n, err);
    s.staged = false;
  }
  if (s.ssl) {
    ERR_clear_error();
    errno = 0;
    tls_read_probe_begin();
    const int r = SSL_read(s.ssl.get(), buf, static_cast<int>(std::min<size_t>(cap, INT_MAX)));
    if (auto drained = tls_read_probe_result(SSL_get_rbio(s.ssl.get()))) s.tls_drained = *drained;
    if (r > 0) {
      n = static_cast<size_t>(r);
      // Nothing left in OpenSSL's buffer and the socket was empty at the
      // last read from it: the next edge says when more arrives.
      if (s.tls_drained && SSL_has_pending(s.ssl.get()) == 0) s.readable = false;
      return Io::ok;
    }
    switch (SSL_get_error(s.ssl.get(), r)) {
      case SSL_ERROR_WANT_READ: s.readable = false; return Io::would_block;
      case SSL_ERROR_WANT_WRITE:
        s.read_wants_write = true;
        s.readable = false;
        return Io::would_block;
      case SSL_ERROR_ZERO_RETURN: return Io::eof;
      default:
        err = errno != 0 ? errno : EPROTO;
        ERR_clear_error();
        return Io::error;
    }
  }
  for (;;) {
    const ssize_t r = ::recv(s.fd, buf, cap, 0);
    if (r > 0) {
      n = static_cast<size_t>(r);
      // A stream socket returns less than asked only when its receive queue
      // is empty; the next edge says when more arrives.
      if (n < cap) s.readable = false;
      return Io::ok;
    }
    if (r == 0) return Io::eof;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      s.readable = false;
      return Io::would_block;
    }
    err = errno;
    return Io::error;
  }
}

void RelayConnection::use_memory_bios(Side& s) {
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  if (in == nullptr || out == nullptr) {
    BIO_free(in);
    BIO_free(out);
    return;  // stays on the socket BIO
  }
  // An empty input BIO asks OpenSSL to retry (SSL_ERROR_WANT_READ), the
  // default for memory BIOs; say so, as the relay depends on it.
  BIO_set_mem_eof_return(in, -1);
  // Records OpenSSL already read ahead stay in the SSL object; the socket
  // BIO it drops was made by SSL_set_fd with BIO_NOCLOSE.
  SSL_set_bio(s.ssl.get(), in, out);
  s.mem_in = in;
  s.mem_out = out;
}

void RelayConnection::collect_cipher(Side& s) {
  char* p = nullptr;
  const long len = BIO_get_mem_data(s.mem_out, &p);
  if (len <= 0) return;
  if (s.cipher_begin > 0 && s.cipher_begin == s.cipher.size()) {
    s.cipher.clear();
    s.cipher_begin = 0;
  }
  s.cipher.insert(s.cipher.end(), p, p + len);
  (void)BIO_reset(s.mem_out);
}

void RelayConnection::absorb_socket_read(Side& s, const uint8_t* data, ssize_t res, size_t asked) {
  if (res > 0) {
    BIO_write(s.mem_in, data, static_cast<int>(res));
    s.sock_drained = static_cast<size_t>(res) < asked;
  } else if (res == 0) {
    s.sock_eof = true;
  } else if (res == -EAGAIN || res == -EWOULDBLOCK) {
    s.sock_drained = true;
  } else if (res != -EINTR) {
    s.sock_err = static_cast<int>(-res);
  }
}

Io RelayConnection::read_tls_mem(Side& s, uint8_t* buf, size_t cap, size_t& n, int& err) {
  if (s.staged) {
    s.staged = false;
    absorb_socket_read(s, s.staged_data, s.staged_res, s.staged_cap);
  }
  for (;;) {
    ERR_clear_error();
    errno = 0;
    const int r = SSL_read(s.ssl.get(), buf, static_cast<int>(std::min<size_t>(cap, INT_MAX)));
    // Reading can make OpenSSL write (an alert, a KeyUpdate answer): it
    // goes out with the next flush.
    collect_cipher(s);
    if (r > 0) {
      n = static_cast<size_t>(r);
      // Nothing buffered anywhere and the socket found empty: the next
      // edge says when more arrives.
      if (s.sock_drained && BIO_ctrl_pending(s.mem_in) == 0 && SSL_has_pending(s.ssl.get()) == 0)
        s.readable = false;
      return Io::ok;
    }
    const int e = SSL_get_error(s.ssl.get(), r);
    if (e == SSL_ERROR_ZERO_RETURN) return Io::eof;
    if (e != SSL_ERROR_WANT_READ) {
      err = errno != 0 ? errno : EPROTO;
      ERR_clear_error();
      return Io::error;
    }
    // OpenSSL needs more ciphertext.
    if (s.sock_err != 0) {
      err = s.sock_err;
      return Io::error;
    }
    if (s.sock_eof) {
      if (s.eof_fed) return Io::eof;
      // The peer closed the socket: OpenSSL reports a clean close_notify
      // (ZERO_RETURN) or a truncated stream (an error), as on a socket.
      s.eof_fed = true;
      BIO_set_mem_eof_return(s.mem_in, 0);
      continue;
    }
    if (s.sock_drained) {
      s.readable = false;
      return Io::would_block;
    }
    // buf doubles as the socket buffer: BIO_write copies the ciphertext
    // before SSL_read writes plaintext there.
    ssize_t got = 0;
    do {
      got = ::recv(s.fd, buf, cap, 0);
    } while (got < 0 && errno == EINTR);
    absorb_socket_read(s, buf, got < 0 ? -static_cast<ssize_t>(errno) : got, cap);
  }
}

Io RelayConnection::send_some(Side& s, const uint8_t* p, size_t len, size_t& n, int& err) {
  for (;;) {
    const ssize_t r = ::send(s.fd, p, len, MSG_NOSIGNAL);
    if (r >= 0) {
      n = static_cast<size_t>(r);
      return Io::ok;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      s.writable = false;
      return Io::would_block;
    }
    err = errno;
    return Io::error;
  }
}

Io RelayConnection::send_cipher_now(Side& s, int& err) {
  while (s.cipher_pending() > 0) {
    size_t n = 0;
    if (const Io io = send_some(s, s.cipher.data() + s.cipher_begin, s.cipher_pending(), n, err);
        io != Io::ok)
      return io;
    s.cipher_begin += n;
  }
  s.cipher.clear();
  s.cipher_begin = 0;
  return Io::ok;
}

Io RelayConnection::take_staged(Side& s, const uint8_t*& data, size_t& n, int& err) {
  s.staged = false;
  const ssize_t r = s.staged_res;
  if (r > 0) {
    data = s.staged_data;
    n = static_cast<size_t>(r);
    // As for recv(): less than asked means the receive queue is empty.
    if (n < s.staged_cap) s.readable = false;
    return Io::ok;
  }
  if (r == 0) return Io::eof;
  if (r == -EAGAIN || r == -EWOULDBLOCK) {
    s.readable = false;
    return Io::would_block;
  }
  err = static_cast<int>(-r);
  return Io::error;
}

unsigned RelayConnection::stage_reads(IoBatch& batch, uint64_t conn_tag, uint8_t* slot, unsigned slots_left) {
  unsigned used = 0;
  // The pump reads the client first, and reads a side only while the other
  // side's output is below out_cap; a staged read it then skips is kept
  // (keep_staged), never lost.
  const std::pair<Side*, bool> sides[] = {{&client_, reads_client()}, {&upstream_, reads_upstream()}};
  for (const auto& [s, wanted] : sides) {
    if (!wanted || used == slots_left || (s->ssl && !s->mem()) || s->fd < 0 || s->staged || !s->carry.empty())
      continue;
    const uint64_t tag = (conn_tag << 1U) | (s == &upstream_ ? 1U : 0U);
    if (!batch.recv(s->fd, slot, batch_slot_size, tag)) break;
    s->staged = true;  // pending: staged_result fills it in
    s->staged_data = slot;
    s->staged_cap = batch_slot_size;
    s->staged_res = -EINTR;
    slot += batch_slot_size;
    ++used;
  }
  return used;
}

void RelayConnection::staged_result(uint64_t side_tag, ssize_t res) {
  Side& s = (side_tag & 1U) != 0 ? upstream_ : client_;
  s.staged_res = res;
}

void RelayConnection::keep_staged() {
  for (Side* s : {&client_, &upstream_}) {
    if (!s->staged) continue;
    s->staged = false;
    // Only bytes need keeping: an end of stream or an error is reported
    // again by the next recv, as the side is still marked readable.
    if (closed_) continue;
    if (s->mem()) {
      // The input BIO is the carry for ciphertext.
      absorb_socket_read(*s, s->staged_data, s->staged_res, s->staged_cap);
    } else if (s->staged_res > 0) {
      s->carry.insert(s->carry.end(), s->staged_data, s->staged_data + s->staged_res);
    }
  }
}

void RelayConnection::queue_sends(IoBatch& batch, uint64_t conn_tag) {
  for (Side* s : {&client_, &upstream_}) {
    if (!s->send_queued) continue;
    s->send_queued = false;
    s->send_asked = 0;
    if (closed_ || s->fd < 0 || s->dead || !s->writable || (s->ssl && !s->mem())) continue;
    // As in pump(): nothing more goes to PostgreSQL while a cancel is on its
    // way; the pump queues it again once the cancel is done.
    if (s == &upstream_ && cancel_in_flight_) continue;
    const uint8_t* p = s->out.data() + s->out_begin;
    size_t len = s->sendable_end() > s->out_begin ? s->sendable_end() - s->out_begin : 0;
    if (s->mem()) {
      p = s->cipher.data() + s->cipher_begin;
      len = s->cipher_pending();
    }
    if (len == 0) continue;
    const uint64_t tag = (conn_tag << 1U) | (s == &upstream_ ? 1U : 0U);
    if (!batch.send(s->fd, p, len, tag)) {
      // The batch is full: the next pass sends it.
      s->send_queued = true;
      loop_.send_queue_.push_back(shared_from_this());
      continue;
    }
    s->send_asked = len;
  }
}

void RelayConnection::sent(bool upstream_side, ssize_t res) {
  Side& s = upstream_side ? upstream_ : client_;
  const size_t asked = s.send_asked;
  s.send_asked = 0;
  if (closed_ || s.dead) return;
  if (res >= 0) {
    // A stream socket that took less than asked is full.
    if (static_cast<size_t>(res) < asked) s.writable = false;
    if (s.mem()) {
      s.cipher_begin += static_cast<size_t>(res);
      if (s.cipher_begin == s.cipher.size()) {
        s.cipher.clear();
        s.cipher_begin = 0;
      }
      return;
    }
    s.out_begin += static_cast<size_t>(res);
    if (s.out_begin == s.out.size() && s.holds.empty()) {
      s.out.clear();
      s.out_begin = 0;
    }
    return;
  }
  if (res == -EAGAIN || res == -EWOULDBLOCK) {
    s.writable = false;
    return;
  }
  if (res == -EINTR) return;  // the pump queues it again
  // Handled in settle_sends, once every send of the batch is accounted
  // for: ending the session here could flush the other side's bytes again
  // when the kernel had already sent them.
  s.send_error = static_cast<int>(-res);
}

void RelayConnection::settle_sends() {
  if (closed_) return;
  if (upstream_.send_error != 0 && !upstream_.dead) {
    const int err = std::exchange(upstream_.send_error, 0);
    upstream_gone(true, err);
    if (closed_) return;
  }
  if (client_.send_error != 0 && !client_.dead) {
    const int err = std::exchange(client_.send_error, 0);
    log::debug(std::string("client connection error: ") + std::strerror(err), id_);
    client_gone();
  }
}

Io RelayConnection::flush(Side& s, int& err, bool defer) {
  if (s.mem()) {
    // Encrypt what may go (into memory: never blocks), then send the
    // ciphertext. Backpressure still holds: pending() counts both.
    const size_t end = s.sendable_end();
    while (s.out_begin < end) {
      ERR_clear_error();
      const int r = SSL_write(s.ssl.get(), s.out.data() + s.out_begin,
                              static_cast<int>(std::min<size_t>(end - s.out_begin, 1 << 20)));
      if (r <= 0) {
        err = EPROTO;
        ERR_clear_error();
        return Io::error;
      }
      s.out_begin += static_cast<size_t>(r);
    }
    if (s.out_begin == s.out.size() && s.holds.empty()) {
      s.out.clear();
      s.out_begin = 0;
    }
    collect_cipher(s);
    if (s.cipher_pending() == 0) return Io::ok;
    if (defer && loop_.batch_) {
      if (!s.send_queued) {
        s.send_queued = true;
        loop_.send_queue_.push_back(shared_from_this());
      }
      return Io::ok;
    }
    return send_cipher_now(s, err);
  }
  if (defer && !s.ssl && loop_.batch_) {
    if (!s.send_queued && s.sendable_end() > s.out_begin) {
      s.send_queued = true;
      loop_.send_queue_.push_back(shared_from_this());
    }
    return Io::ok;
  }
  const size_t end = s.sendable_end();
  while (s.out_begin < end) {
    const uint8_t* p = s.out.data() + s.out_begin;
    const size_t avail = end - s.out_begin;
    size_t n = 0;
    if (s.ssl) {
      ERR_clear_error();
      errno = 0;
      // The length never shrinks between retries (out only grows at the
      // end), as OpenSSL requires after WANT_WRITE.
      const int r = SSL_write(s.ssl.get(), p, static_cast<int>(std::min<size_t>(avail, 1 << 20)));
      if (r <= 0) {
        switch (SSL_get_error(s.ssl.get(), r)) {
          case SSL_ERROR_WANT_WRITE: s.writable = false; return Io::would_block;
          case SSL_ERROR_WANT_READ:
            s.write_wants_read = true;
            s.writable = false;
            return Io::would_block;
          default:
            err = errno != 0 ? errno : EPROTO;
            ERR_clear_error();
            return Io::error;
        }
      }
      n = static_cast<size_t>(r);
    } else if (const Io io = send_some(s, p, avail, n, err); io != Io::ok) {
      return io;
    }
    s.out_begin += n;
  }
  if (s.out_begin == s.out.size() && s.holds.empty()) {
    s.out.clear();
    s.out_begin = 0;
  }
  return Io::ok;
}

void RelayConnection::update_interest(Side& s) {
  if (s.fd < 0) return;
  const bool want = (s.has_output() && !s.writable) || s.read_wants_write;
  if (want == s.epollout) return;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET | (want ? EPOLLOUT : 0U);
  ev.data.ptr = &s.tag;
  // Re-arming also reports readiness that is already there, so no edge is lost.
  if (epoll_ctl(loop_.epoll_fd_, EPOLL_CTL_MOD, s.fd, &ev) == 0) s.epollout = want;
}

void RelayConnection::on_event(bool upstream_side, uint32_t events) {
  Side& s = upstream_side ? upstream_ : client_;
  if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0U) {
    s.readable = true;
    s.sock_drained = false;
    if (s.write_wants_read) {
      s.write_wants_read = false;
      s.writable = true;
    }
  }
  if ((events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) != 0U) {
    s.writable = true;
    if (s.read_wants_write) {
      s.read_wants_write = false;
      s.readable = true;
    }
  }
}

// --- the pump ---------------------------------------------------------------

bool RelayConnection::pump() {
  uint8_t* rx = loop_.rx_.data();
  int budget = pass_budget;
  bool progress = true;
  while (progress && !closed_) {
    progress = false;
    int err = 0;
    // Client to PostgreSQL.
    if (reads_client()) {
      size_t n = 0;
      const uint8_t* data = rx;
      switch (read(client_, rx, rx_size, data, n, err)) {
        case Io::ok:
          last_activity_ = Clock::now();
          progress = true;
          if (!from_client(Bytes(data, n))) break;
          break;
        case Io::would_block: break;
        case Io::eof: client_gone(); break;
        case Io::error:
          log::debug(std::string("client connection error: ") + std::strerror(err), id_);
          client_gone();
          break;
      }
      if (closed_) return false;
    }
    if (upstream_.pending() > 0 && upstream_.writable && !upstream_.dead && !cancel_in_flight_) {
      const size_t before = upstream_.pending();
      if (flush(upstream_, err, true) == Io::error) {
        upstream_gone(true, err);
        if (closed_) return false;
      }
      if (upstream_.pending() != before) progress = true;
    }
    // PostgreSQL to client.
    if (reads_upstream()) {
      size_t n = 0;
      const uint8_t* data = rx;
      switch (read(upstream_, rx, rx_size, data, n, err)) {
        case Io::ok:
          last_activity_ = Clock::now();
          progress = true;
          from_server(Bytes(data, n));
          break;
        case Io::would_block: break;
        case Io::eof: upstream_gone(false, 0); break;
        case Io::error: upstream_gone(true, err); break;
      }
      if (closed_) return false;
    }
    if (client_.has_output() && client_.writable && !client_.dead) {
      const size_t before = client_.pending();
      if (flush(client_, err, true) == Io::error) {
        log::debug(std::string("client connection error: ") + std::strerror(err), id_);
        client_gone();
        return false;
      }
      if (client_.pending() != before) progress = true;
    }
    if (closing_) {
      // Once the client has what it is owed (and PostgreSQL its Terminate),
      // end the session.
      const bool upstream_done = upstream_.dead || upstream_.pending() == 0;
      if (client_.pending() == 0 && upstream_done) {
        close_now();
        return false;
      }
    }
    if (progress && --budget == 0) {
      update_interest(client_);
      update_interest(upstream_);
      return true;
    }
  }
  if (!closed_) {
    update_interest(client_);
    update_interest(upstream_);
  }
  return false;
}

void RelayConnection::refresh_policy() {
  if (!hooks_) return;
  const uint64_t g = hooks_.generation();
  if (policy_known_ && g == policy_generation_) return;
  policy_generation_ = g;
  policy_known_ = true;
  policy_ = hooks_.lookup();
  const bool was = masked_;
  masked_ = policy_.unavailable.has_value() || (policy_.policy && policy_.policy->masks_anything());
  if (observe_.live)
    observe_.live->set_policy(policy_.policy ? policy_.policy->policy().name : std::string());
  if (observe_.detector != nullptr && observe_.refresh_identity)
    observe_.identity = observe_.refresh_identity();
  if (audit_) {
    // Records name the policy in force when the statement ran.
    const std::string name = policy_.policy ? policy_.policy->policy().name : std::string();
    if (audit_.session && audit_.session->policy != name) {
      auto s = std::make_shared<AuditSession>(*audit_.session);
      s->policy = name;
      audit_.session = std::move(s);
    }
  }
  if (!tracking()) expect_.clear();
  if (was != masked_)
    log::info(masked_ ? "masking is on for this session" : "masking is off for this session", id_);
}

std::shared_ptr<const rules::StatementDecision> RelayConnection::decide(std::string_view sql) {
  if (policy_.unavailable) {
    auto d = std::make_shared<rules::StatementDecision>();
    d->action = rules::StatementDecision::Action::refuse;
    d->rule = "policy-unavailable";
    d->refusal = *policy_.unavailable;
    return d;
  }
  if (auto r = rules::reading_refusal(reading_, sql, policy_.policy->protection())) {
    auto d = std::make_shared<rules::StatementDecision>();
    d->action = rules::StatementDecision::Action::refuse;
    d->rule = std::move(r->rule);
    d->refusal = std::move(r->error);
    return d;
  }
  const bool stale = hooks_.stale && hooks_.stale();
  return loop_.decisions_.decide(sql, *policy_.policy,
                                 stale ? rules::AnalysisMode::strict : rules::AnalysisMode::normal);
}

bool RelayConnection::from_client(Bytes chunk) {
  refresh_policy();
  bool saw_terminate = false;
  Error violation;
  auto st = client_frames_.feed(
      chunk, upstream_.out,
      [&](uint8_t type, uint32_t) {
        if (!frontend_types[type]) {
          violation = Error::protocol("invalid frontend message type " + printable_type(type));
          return protocol::FrameAction::reject;
        }
        if (type == fe::query || type == fe::sync || type == fe::function_call) {
          ++pending_ready_;
          server_at_ready_ = false;
          if (type == fe::sync) unsynced_ = false;
        } else if (type == fe::terminate) {
          saw_terminate = true;
          // Session pooling: decided in client_frame, where everything
          // before the Terminate has been accounted for.
          if (recycle_) return protocol::FrameAction::hold;
        } else if (type == fe::parse || type == fe::bind || type == fe::describe || type == fe::execute ||
                   type == fe::close) {
          unsynced_ = true;
        }
        if (!tracking()) {
          // Unmasked sessions are not analysed, but DDL they run must
          // refresh the catalog masked sessions depend on.
          const bool watch = hooks_.catalog_changed && (type == fe::query || type == fe::parse);
          return watch ? protocol::FrameAction::hold : protocol::FrameAction::pass;
        }
        switch (type) {
          case fe::query:
          case fe::parse:
          case fe::function_call:
            return protocol::FrameAction::hold;  // expectation recorded with the decision
          case fe::bind:
            if (recording()) return protocol::FrameAction::hold;  // portal and statement names
            expect_.push_back({Expect::bind, {}});
            break;
          case fe::describe: expect_.push_back({Expect::describe, {}}); break;
          case fe::execute:
            if (recording()) return protocol::FrameAction::hold;  // which portal runs
            expect_.push_back({Expect::execute, {}});
            break;
          case fe::close:
            if (recording()) return protocol::FrameAction::hold;  // forget what it closes
            expect_.push_back({Expect::close, {}});
            break;
          case fe::sync: expect_.push_back({Expect::sync, {}}); break;
          default: break;
        }
        return protocol::FrameAction::pass;
      },
      [&](uint8_t type, Bytes frame, Buffer& out) { client_frame(type, frame, out); }, violation);
  if (!st) {
    // Fail closed: a malformed stream is not forwarded past the bad frame.
    log::warn("closing session: " + st.error().message, id_);
    queue_error(st.error());
    begin_closing();
    return false;
  }
  if (saw_terminate) {
    terminate_sent_ = true;
    begin_closing();
    return false;
  }
  return true;
}

void RelayConnection::note_ddl() {
  ddl_seen_ = true;
  if (hooks_.catalog_changed) hooks_.catalog_changed();
}

void RelayConnection::client_frame(uint8_t type, Bytes frame, Buffer& out) {
  if (type == fe::terminate) {
    // Only held with session pooling: a clean exit keeps the backend (the
    // Terminate is not forwarded), anything else ends it as usual.
    if (recyclable()) {
      recycle_now_ = true;
    } else {
      out.insert(out.end(), frame.begin(), frame.end());
    }
    return;
  }
  if (!tracking()) {
    // Held only to spot DDL (see from_client); forwarded unchanged.
    const Bytes body = frame.subspan(5);
    std::string text;
    if (type == fe::query) {
      if (auto q = protocol::Query::decode(body)) text = std::move(q->sql);
    } else if (auto p = protocol::Parse::decode(body)) {
      text = std::move(p->query);
    }
    if (rules::may_change_catalog(text)) note_ddl();
    out.insert(out.end(), frame.begin(), frame.end());
    return;
  }
  switch (type) {
    case fe::query: return client_query(frame, out);
    case fe::parse: return client_parse(frame, out);
    case fe::bind: return client_bind(frame, out);
    case fe::execute: return client_execute(frame, out);
    case fe::function_call: return client_function_call(frame, out);
    case fe::close: return client_close(frame, out);
    default: out.insert(out.end(), frame.begin(), frame.end());
  }
}

// A refused message is replaced by one PostgreSQL rejects, so its
// transaction and pipeline state follow; its error is swapped for `refusal`.
void RelayConnection::poison(Expect kind, const Error& refusal, std::shared_ptr<AuditPending> audit,
                             Buffer& out, const std::string& statement_name) {
  if (kind == Expect::parse) {
    protocol::Parse{statement_name, std::string(poison_sql), {}}.encode(out);
  } else {
    protocol::Query{std::string(poison_sql)}.encode(out);
  }
  if (audit) {
    audit->decision = "denied";
    if (audit->rule.empty()) audit->rule = "refused";
    audit->message = refusal.message;
  }
  expect_.push_back({kind, refusal, std::move(audit)});
}

// Close: what the audit records remember of the statement or portal goes
// with it (a driver that names statements S_1, S_2, ... and closes them
// would otherwise grow these maps for as long as the session lives).
void RelayConnection::client_close(Bytes frame, Buffer& out) {
  out.insert(out.end(), frame.begin(), frame.end());
  expect_.push_back({Expect::close, {}});
  auto c = protocol::Close::decode(frame.subspan(5));
  if (!c) return;  // PostgreSQL rejects it the same way
  forget_audit_source(c->kind == 'S', c->name);
}

RelayConnection::AuditSource* RelayConnection::audit_source(bool statement, const std::string& name) {
  if (name.empty()) {
    AuditSource& unnamed = statement ? audit_unnamed_statement_ : audit_unnamed_portal_;
    return unnamed.defined ? &unnamed : nullptr;
  }
  auto& named = statement ? audit_statements_ : audit_portals_;
  auto it = named.find(name);
  return it == named.end() ? nullptr : &it->second;
}

void RelayConnection::set_audit_source(bool statement, const std::string& name, AuditSource src) {
  src.defined = true;
  if (name.empty()) {
    (statement ? audit_unnamed_statement_ : audit_unnamed_portal_) = std::move(src);
  } else {
    (statement ? audit_statements_ : audit_portals_)[name] = std::move(src);
  }
}

// What a statement name is bound to before a Parse rebinds it. PostgreSQL
// drops the unnamed statement when a Parse of it starts, so a failed one
// leaves none; a failed Parse of a named statement leaves the old one
// (exec_parse_message, src/backend/tcop/postgres.c).
RelayConnection::Expectation::Binding RelayConnection::binding_of(const std::string& name) {
  Expectation::Binding b{name, std::nullopt};
  if (!name.empty()) {
    if (AuditSource* old = audit_source(true, name)) b.previous = *old;
  }
  return b;
}

void RelayConnection::restore_binding(const Expectation::Binding& b) {
  if (b.previous) {
    set_audit_source(true, b.name, *b.previous);
  } else {
    forget_audit_source(true, b.name);
  }
}

void RelayConnection::forget_audit_source(bool statement, const std::string& name) {
  if (name.empty()) {
    (statement ? audit_unnamed_statement_ : audit_unnamed_portal_) = {};
  } else {
    (statement ? audit_statements_ : audit_portals_).erase(name);
  }
}

void RelayConnection::client_function_call(Bytes frame, Buffer& out) {
  std::shared_ptr<AuditPending> pending;
  if (recording()) {
    pending = audit_pending(nullptr, false);
    if (auto fc = protocol::FunctionCall::decode(frame.subspan(5))) pending->function_oid = fc->function_oid;
  }
  if (audit_refusing()) {
    pending->rule = "audit-unavailable";
    return poison(Expect::function_call, audit_refusal(), std::move(pending), out);
  }
  if (!masked_) {
    out.insert(out.end(), frame.begin(), frame.end());
    expect_.push_back({Expect::function_call, {}, std::move(pending)});
    return;
  }
  // The fast-path call carries no SQL to analyse (lo_export, pg_read_file
  // by OID): refused for masked sessions (MASKING-THREATS.md, class 15).
  Error e = policy_.policy ? rules::policy_refusal(
                                 *policy_.policy, "deny:function-call", "the fast-path FunctionCall message",
                                 "it calls a function by OID without SQL pgcloak can analyse")
                           : *policy_.unavailable;
  log::warn("refused: FunctionCall message", id_);
  if (pending) pending->rule = "deny:function-call";
  poison(Expect::function_call, e, std::move(pending), out);
}

void RelayConnection::client_query(Bytes frame, Buffer& out) {
  auto q = protocol::Query::decode(frame.subspan(5));
  if (!q) return poison(Expect::query, q.error(), nullptr, out);
  std::shared_ptr<AuditPending> pending;
  // The text moves into the record's shared copy when there is one.
  if (recording()) pending = audit_pending(std::make_shared<const std::string>(std::move(q->sql)), false);
  const std::string& sql = pending ? *pending->sql : q->sql;
  if (pending) {
    // SQL-level DEALLOCATE/DISCARD ALL drop named statements as Close does
    // (client_close): their audit sources go too.
    if (auto d = rules::deallocation_of(sql)) {
      if (d->all) {
        audit_statements_.clear();
        audit_unnamed_statement_ = {};
      } else {
        forget_audit_source(true, d->name);
      }
    }
  }
  if (audit_refusing()) {
    pending->rule = "audit-unavailable";
    return poison(Expect::query, audit_refusal(), std::move(pending), out);
  }
  if (pending && pending->stop) {
    const Error e = *pending->stop;
    return poison(Expect::query, e, std::move(pending), out);
  }
  if (!masked_) {
    if (hooks_.catalog_changed && rules::may_change_catalog(sql)) note_ddl();
    out.insert(out.end(), frame.begin(), frame.end());
    expect_.push_back({Expect::query, {}, std::move(pending)});
    return;
  }
  auto d = decide(sql);
  // A refused statement never runs, so it cannot change the catalog (and
  // must not make a masked client able to keep the catalog loader busy).
  if (d->catalog_may_change && d->action != rules::StatementDecision::Action::refuse) note_ddl();
  if (pending) pending->rule = d->rule;
  switch (d->action) {
    case rules::StatementDecision::Action::pass:
      out.insert(out.end(), frame.begin(), frame.end());
      expect_.push_back({Expect::query, {}, std::move(pending)});
      return;
    case rules::StatementDecision::Action::rewrite:
      if (pending) pending->decision = "masked";
      if (!d->output_sql.empty() && utf8_client_ && utf8_server_ && policy_.policy) {
        // Output masking: some masks are applied to the result rows here
        // (result_columns, backstop_row) instead of in PostgreSQL.
        protocol::Query{d->output_sql}.encode(out);
        expect_.push_back({Expect::query, {}, std::move(pending), d, policy_.policy});
        return;
      }
      protocol::Query{d->sql}.encode(out);
      expect_.push_back({Expect::query, {}, std::move(pending)});
      return;
    case rules::StatementDecision::Action::refuse:
      log::info("refused (" + d->rule + "): " + d->refusal->message, id_);
      return poison(Expect::query, *d->refusal, std::move(pending), out);
  }
}

// Parse: analysed and rewritten once; PostgreSQL keeps the rewritten
// statement under the client's name, so Bind/Execute/Describe need no
// change and Describe reports the masked statement's (identical) shape.
void RelayConnection::client_parse(Bytes frame, Buffer& out) {
  auto p = protocol::Parse::decode(frame.subspan(5));
  if (!p) return poison(Expect::parse, p.error(), nullptr, out);
  std::shared_ptr<AuditPending> pending;
  if (recording()) {
    pending = audit_pending(std::make_shared<const std::string>(p->query), true);
    pending->statement_name = p->statement;
  }
  // Later Bind/Execute records name this text, until PostgreSQL refuses
  // the Parse: then the name is bound to what it had (restore_binding).
  std::optional<Expectation::Binding> rebind;
  auto remember = [&] {
    if (!pending) return;
    rebind = binding_of(p->statement);
    set_audit_source(
        true, p->statement,
        {pending->sql, pending->decision, pending->rule, p->statement, pending->profile, {}, {}});
  };
  // The expectation just pushed for this Parse carries the binding back.
  auto mark = [&] {
    if (rebind && !expect_.empty()) expect_.back().rebind_on_error = std::move(rebind);
  };
  if (audit_refusing()) {
    pending->rule = "audit-unavailable";
    return poison(Expect::parse, audit_refusal(), std::move(pending), out, p->statement);
  }
  if (!masked_) {
    if (hooks_.catalog_changed && rules::may_change_catalog(p->query)) note_ddl();
    remember();
    out.insert(out.end(), frame.begin(), frame.end());
    expect_.push_back({Expect::parse, {}, std::move(pending)});
    return mark();
  }
  auto d = decide(p->query);
  // A refused statement never runs, so it cannot change the catalog (and
  // must not make a masked client able to keep the catalog loader busy).
  if (d->catalog_may_change && d->action != rules::StatementDecision::Action::refuse) note_ddl();
  if (pending) pending->rule = d->rule;
  switch (d->action) {
    case rules::StatementDecision::Action::pass:
      remember();
      out.insert(out.end(), frame.begin(), frame.end());
      expect_.push_back({Expect::parse, {}, std::move(pending)});
      return mark();
    case rules::StatementDecision::Action::rewrite:
      if (pending) pending->decision = "masked";
      remember();
      p->query = d->sql;
      p->encode(out);
      expect_.push_back({Expect::parse, {}, std::move(pending)});
      return mark();
    case rules::StatementDecision::Action::refuse:
      log::info("refused (" + d->rule + "): " + d->refusal->message, id_);
      if (pending) {
        pending->decision = "denied";
        remember();
      }
      poison(Expect::parse, *d->refusal, std::move(pending), out, p->statement);
      return mark();
  }
}

// Bind and Execute are held only when audited (from_client).
void RelayConnection::client_bind(Bytes frame, Buffer& out) {
  out.insert(out.end(), frame.begin(), frame.end());
  auto b = protocol::Bind::decode(frame.subspan(5));
  if (!b) {
    // PostgreSQL rejects it the same way; the record says what failed.
    expect_.push_back({Expect::bind, {}, audit_pending(nullptr, true)});
    return;
  }
  AuditSource src;
  if (const AuditSource* st = audit_source(true, b->statement)) src = *st;
  src.statement_name = b->statement;
  if (observe_.detector != nullptr && observe_.detector->active()) {
    uint64_t h = rules::detection_hash(b->statement);
    for (const auto& v : b->parameters) {
      h = v ? rules::detection_hash(std::string_view(reinterpret_cast<const char*>(v->data()), v->size()), h)
            : rules::detection_hash("\xff", h);
    }
    src.key = h;
  }
  if (audit_.log_parameters) {
    // Sealed by the audit writer, never written in the clear.
    std::vector<std::optional<std::string>> values;
    values.reserve(b->parameters.size());
    for (const auto& v : b->parameters) {
      if (v) {
        values.emplace_back(std::string(reinterpret_cast<const char*>(v->data()), v->size()));
      } else {
        values.emplace_back(std::nullopt);
      }
    }
    src.parameters = std::move(values);
  }
  auto pending = audit_pending(src.sql, true, src.profile);
  pending->statement_name = src.statement_name;
  pending->portal_name = b->portal;
  pending->decision = src.decision;
  pending->rule = src.rule;
  pending->key = src.key;
  pending->parameters = src.parameters;
  set_audit_source(false, b->portal, std::move(src));
  expect_.push_back({Expect::bind, {}, std::move(pending)});
}

void RelayConnection::client_execute(Bytes frame, Buffer& out) {
  auto e = protocol::Execute::decode(frame.subspan(5));
  std::shared_ptr<AuditPending> pending = audit_pending(nullptr, true);
  if (e) {
    pending->portal_name = e->portal;
    if (const AuditSource* portal = audit_source(false, e->portal)) {
      pending->sql = portal->sql;
      pending->statement_name = portal->statement_name;
      pending->decision = portal->decision;
      pending->rule = portal->rule;
      pending->profile = portal->profile;
      pending->key = portal->key;
      pending->parameters = portal->parameters;
      observe_start(*pending);
      detect_start(*pending, true);
    }
  }
  if (pending->stop) {
    // Replaced by a Parse PostgreSQL rejects, as for an audit refusal.
    const Error err = *pending->stop;
    return poison(Expect::parse, err, std::move(pending), out, "pgcloak_refused");
  }
  if (audit_refusing()) {
    pending->rule = "audit-unavailable";
    // Replaced by a Parse PostgreSQL rejects: the pipeline then skips to
    // Sync exactly as after a failed Execute.
    return poison(Expect::parse, audit_refusal(), std::move(pending), out, "pgcloak_refused");
  }
  out.insert(out.end(), frame.begin(), frame.end());
  expect_.push_back({Expect::execute, {}, std::move(pending)});
}

// --- audit ------------------------------------------------------------------

std::shared_ptr<RelayConnection::AuditPending> RelayConnection::audit_pending(
    std::shared_ptr<const std::string> sql, bool extended,
    std::shared_ptr<const rules::StatementAudit> profile) {
  if (!recording()) return nullptr;
  auto p = std::make_shared<AuditPending>();
  p->sql = std::move(sql);
  p->extended = extended;
  p->profile = std::move(profile);
  if (observe_ && p->sql) {
    if (!p->profile)
      p->profile = loop_.profiles_.get(*p->sql, 0, observe_.protection ? observe_.protection() : nullptr);
    // Parse only prepares: the statement starts running at Execute.
    if (!extended) {
      // The simple protocol's text carries its literals: its hash tells
      // one lookup from the next (slow drip, probing).
      if (observe_.detector != nullptr && observe_.detector->active())
        p->key = rules::detection_hash(*p->sql);
      observe_start(*p);
      detect_start(*p, true);
    }
  }
  return p;
}

bool RelayConnection::audit_refusing() const {
  return audit_ && audit_.fail_closed && !audit_.log->accepting();
}

Error RelayConnection::audit_refusal() const {
  return Error::make(sqlstate::io_error,
                     "pgcloak cannot write its audit trail, so it refuses new statements until it can",
                     Severity::error,
                     "Retry in a moment; an administrator should check the audit sink (see pgcloak's log). "
                     "This is audit.on_failure: fail_closed.");
}

// Submits the record of one statement (docs/audit.md, "statement").
void RelayConnection::audit_emit(AuditPending& p, std::string_view tag, std::string_view sqlstate) {
  if (observe_) observe_emit(p, sqlstate);
  if (!audit_) return;
  StatementCapture c;
  c.sql = p.sql;
  c.connection = id_;
  c.index = p.index;
  c.extended = p.extended;
  c.statement_name = p.statement_name;
  c.portal_name = p.portal_name;
  c.command_tag = std::string(tag);
  c.rows = p.rows;
  // Rows affected come from the tag ("INSERT 0 5", "UPDATE 3", "COPY 10");
  // rows returned are the DataRows counted on the way.
  if (auto sp = tag.rfind(' '); sp != std::string_view::npos && p.rows == 0) {
    uint64_t n = 0;
    bool digits = sp + 1 < tag.size();
    for (char ch : tag.substr(sp + 1)) {
      if (ch < '0' || ch > '9') {
        digits = false;
        break;
      }
      n = n * 10 + static_cast<uint64_t>(ch - '0');
    }
    if (digits) c.rows = n;
  }
  c.bytes_to_client = p.bytes;
  c.duration = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - p.start);
  c.sqlstate = std::string(sqlstate);
  c.decision = p.decision;
  c.rule = p.rule;
  c.parameters = p.parameters;
  AuditEvent ev;
  ev.kind = "statement";
  ev.session = audit_.session;
  ev.statement = std::move(c);
  ++audit_statement_count_;
  audit_rows_ += p.rows;
  audit_bytes_ += p.bytes;
  audit_last_seq_ = audit_.log->submit(std::move(ev));
}

// CommandComplete or an error ended the head statement.
void RelayConnection::audit_statement_done(std::string_view tag, std::string_view sqlstate) {
  if (expect_.empty() || !expect_.front().audit) return;
  Expectation& head = expect_.front();
  AuditPending& p = *head.audit;
  switch (head.kind) {
    case Expect::query: {
      // Whether the Query string holds another statement after this one;
      // asked before p's profile moves on (without the analysis, assume so).
      const bool more = !p.profile || p.index + 1 < p.profile->statements_in_text;
      audit_emit(p, tag, sqlstate);
      // The next statement of the same Query string starts now.
      ++p.index;
      p.rows = 0;
      p.bytes = 0;
      p.start = Clock::now();
      // Past the last statement there is nothing to analyse (and a lookup
      // by index > 0 is keyed by the whole text: a parse per Query).
      if (observe_ && p.sql && more) {
        p.profile =
            loop_.profiles_.get(*p.sql, p.index, observe_.protection ? observe_.protection() : nullptr);
        if (!p.profile->parse_error && !p.profile->empty) {
          observe_start(p);
          p.watch = {};
          p.detecting = false;
          detect_start(p, false);  // already with PostgreSQL: a stop cancels it
        }
      } else {
        p.profile.reset();
      }
      break;
    }
    case Expect::execute:
    case Expect::parse:
    case Expect::bind: audit_emit(p, tag, sqlstate); break;
    case Expect::function_call:
      if (!sqlstate.empty()) p.sqlstate = std::string(sqlstate);
      break;
    default: break;
  }
}

// Strict durability: the ReadyForQuery about to be appended to the
// client's buffer waits until this session's last record is durable.
void RelayConnection::audit_hold_ready() {
  if (!audit_ || !audit_.strict || audit_last_seq_ == 0) return;
  if (audit_last_seq_ <= audit_.log->durable_seq()) return;
  if (!client_.holds.empty() && client_.holds.back().second >= audit_last_seq_) return;
  // Held from the first byte not yet sent, not just from ReadyForQuery: the
  // client cannot go on before ReadyForQuery anyway, and the result sent
  // alone would cost a send and a wake-up of the client per statement. What
  // is held is bounded by the buffer (larger results went out already).
  const size_t at = client_.holds.empty() ? client_.out_begin : client_.holds.back().first;
  client_.holds.emplace_back(at, audit_last_seq_);
  loop_.await_durable(*audit_.log, shared_from_this(), audit_last_seq_);
}

void RelayConnection::audit_durable(uint64_t durable) {
  while (!client_.holds.empty() && client_.holds.front().second <= durable) client_.holds.pop_front();
}

// --- metrics and console ------------------------------------------------------

void RelayConnection::observe_start(AuditPending& p) {
  if (!observe_.live) return;
  const auto cls = p.profile && !p.profile->parse_error ? p.profile->audit_class
                   : p.function_oid != 0                ? rules::AuditClass::function
                                                        : rules::AuditClass::misc;
  observe_.live->current_rows.store(0, std::memory_order_relaxed);
  observe_.live->current_class.store(static_cast<int>(cls), std::memory_order_relaxed);
}

// Values the masks replaced in the result: one per row and masked protected
// column the statement reads, counted under the column's category for the
// session's policy.
uint64_t RelayConnection::masked_values(const rules::StatementAudit& profile, uint64_t rows) {
  if (rows == 0 || !policy_.policy || !observe_.metrics) return 0;
  uint64_t total = 0;
  for (const auto& [oid, column] : profile.protected_refs) {
    const rules::RelationMasks* m = policy_.policy->masks_for(oid);
    if (m == nullptr || m->protection == nullptr || column >= m->specs.size()) continue;
    if (m->specs[column].kind == rules::MaskKind::allow) continue;
    const auto& col = m->protection->columns[column];
    const std::string_view category = col.category ? std::string_view(*col.category) : "derived";
    observe_.metrics.on_masked_values(category, policy_.policy->policy().name, rows);
    total += rows;
  }
  return total;
}

// --- exfiltration detection -----------------------------------------------------

void RelayConnection::detect_start(AuditPending& p, bool can_refuse) {
  rules::Detector* det = observe_.detector;
  // Inactive (every rule switched off by a reload): no facts, no call.
  if (det == nullptr || !det->active() || !p.profile || p.profile->parse_error) return;
  using Op = rules::StatementAudit::CursorOp;
  const rules::StatementAudit& a = *p.profile;
  if (a.cursor_op == Op::close) {
    if (a.cursor_name.empty()) {
      cursor_facts_.clear();
    } else {
      cursor_facts_.erase(a.cursor_name);
    }
    return;
  }
  const rules::StatementFacts* facts = nullptr;
  if (a.cursor_op == Op::fetch) {
    // FETCH names no relation: its rows are the DECLARE's query's.
    auto it = cursor_facts_.find(a.cursor_name);
    if (it == cursor_facts_.end()) return;
    facts = &it->second;
  } else {
    if (a.protected_refs.empty()) return;
    auto protection = observe_.protection ? observe_.protection() : nullptr;
    if (!protection) return;
    facts = &loop_.facts_.get(p.profile, protection, policy_.policy.get());
    if (facts->reads.empty()) return;
    if (a.cursor_op == Op::declare) {
      if (cursor_facts_.size() >= max_cursor_facts && !cursor_facts_.contains(a.cursor_name))
        cursor_facts_.erase(cursor_facts_.begin());
      cursor_facts_[a.cursor_name] = *facts;
    }
  }
  p.facts = *facts;
  p.facts.key = p.key;
  p.detecting = true;
  std::vector<rules::Alert> alerts;
  p.watch = det->on_statement(*observe_.identity, p.facts, std::chrono::system_clock::now(), alerts);
  if (!alerts.empty()) act_on(alerts, &p, can_refuse);
}

void RelayConnection::detect_limit(AuditPending& p) {
  rules::Detector* det = observe_.detector;
  if (det == nullptr) return;
  auto alerts = det->limit_alert(*observe_.identity, p.facts, p.watch, p.rows, p.bytes,
                                 std::chrono::system_clock::now());
  if (!alerts.empty()) act_on(alerts, &p, false);
}

void RelayConnection::detect_end(AuditPending& p) {
  rules::Detector* det = observe_.detector;
  if (det == nullptr) return;
  std::vector<rules::Alert> alerts;
  const auto now = std::chrono::system_clock::now();
  if (p.decision == "denied") {
    alerts = det->on_denial(*observe_.identity, p.rule, now);
  } else if (p.detecting) {
    det->on_statement_end(*observe_.identity, p.facts, p.watch, p.rows, p.bytes, now, alerts);
  }
  p.detecting = false;
  if (!alerts.empty()) act_on(alerts, nullptr, false);
}

// Every alert goes to the hub; the strongest action among them is taken.
void RelayConnection::act_on(const std::vector<rules::Alert>& alerts, AuditPending* running,
                             bool can_refuse) {
  const rules::Alert* strongest = nullptr;
  for (const auto& a : alerts) {
    if (observe_.alerts != nullptr) observe_.alerts->raise(a, audit_.session);
    if (strongest == nullptr || static_cast<int>(a.action) > static_cast<int>(strongest->action))
      strongest = &a;
  }
  if (strongest == nullptr || strongest->action == rules::AlertAction::alert) return;
  const rules::Alert& a = *strongest;
  const std::string why =
      "rule \"" + a.rule + "\" (" + a.detector + ")" + (a.message.empty() ? std::string() : ": " + a.message);
  const std::string hint =
      "pgcloak watches reads of protected data for possible exfiltration. If this was legitimate work, "
      "ask your administrator to adjust the rule.";
  if (a.action == rules::AlertAction::cancel) {
    Error e = Error::make(sqlstate::query_canceled, "pgcloak cancelled this statement: " + why,
                          Severity::error, hint);
    if (running != nullptr && can_refuse) {
      running->stop = e;
      running->rule = a.rule;
    } else if (running != nullptr) {
      running->rule = a.rule;
      cut_statement(e);
    }
    return;
  }
  // terminate and block end the session (block also refuses new logins:
  // the detector keeps the block).
  std::string what = a.action == rules::AlertAction::block
                         ? "pgcloak ended this session and blocks new logins of \"" + a.user + "\" for " +
                               std::to_string(a.block_for.count() / 60) + " minutes: " + why
                         : "pgcloak ended this session: " + why;
  Error e = Error::make(sqlstate::admin_shutdown, std::move(what), Severity::fatal, hint);
  if (running != nullptr) {
    running->rule = a.rule;
    if (can_refuse) running->stop = e;
  }
  if (running != nullptr && !can_refuse) {
    // Rows are streaming, and this runs while a chunk from PostgreSQL is
    // being relayed (earlier messages of it are not in the client's buffer
    // yet): no more rows go out, and the error follows once the chunk is
    // done (from_server).
    cutting_ = true;
    terminate_later_ = e;
  } else if (server_frames_.output_at_boundary()) {
    terminate_with(e);
  } else {
    // PostgreSQL's output stops mid-message in the client's buffer: the
    // error waits for the end of that message (from_server).
    terminate_later_ = e;
  }
}

// The cancel action on the statement whose rows are streaming (the head of
// expect_): no more of its rows reach the client, PostgreSQL is asked to
// cancel it, and its end (PostgreSQL's 57014, or a CommandComplete that
// beat the cancel) becomes the rule's error.
void RelayConnection::cut_statement(const Error& e) {
  if (cutting_ || expect_.empty()) return;
  cutting_ = true;
  expect_.front().refusal = e;
  if (observe_.cancel_upstream && !cancel_in_flight_) {
    cancel_in_flight_ = true;
    std::weak_ptr<RelayConnection> self = weak_from_this();
    RelayLoop* loop = &loop_;
    observe_.cancel_upstream([self, loop] {
      loop->post([self] {
        if (auto c = self.lock()) {
          c->cancel_done();
          c->pump();
        }
      });
    });
  }
}

void RelayConnection::cancel_done() {
  cancel_in_flight_ = false;
}

void RelayConnection::observe_emit(AuditPending& p, std::string_view sqlstate) {
  detect_end(p);
  const rules::StatementAudit* prof = p.profile && !p.profile->parse_error ? p.profile.get() : nullptr;
  const auto cls = prof != nullptr       ? prof->audit_class
                   : p.function_oid != 0 ? rules::AuditClass::function
                                         : rules::AuditClass::misc;
  const bool denied = p.decision == "denied";
  const bool masked = p.decision == "masked";
  static const std::vector<std::string> none;
  const std::vector<std::string>& relations = prof != nullptr ? prof->protected_relations : none;
  const uint64_t protected_rows = relations.empty() ? 0 : p.rows;
  const uint64_t masked_count = masked && prof != nullptr ? masked_values(*prof, p.rows) : 0;
  if (observe_.metrics) {
    StatementMetrics m;
    m.statement_class = cls;
    m.decision = denied   ? StatementVerdict::denied
                 : masked ? StatementVerdict::masked
                          : StatementVerdict::allowed;
    m.rule = p.rule;
    m.duration = Clock::now() - p.start;
    m.rows = p.rows;
    m.bytes = p.bytes;
    m.protected_relations = relations;
    observe_.metrics.on_statement(m);
  }
  if (LiveSession* live = observe_.live.get()) {
    // Plain stores: this thread is the only writer.
    constexpr auto relaxed = std::memory_order_relaxed;
    live->current_class.store(-1, relaxed);
    live->current_rows.store(0, relaxed);
    live->statements.store(live->statements.load(relaxed) + 1, relaxed);
    live->rows.store(live->rows.load(relaxed) + p.rows, relaxed);
    live->bytes.store(live->bytes.load(relaxed) + p.bytes, relaxed);
    if (protected_rows > 0)
      live->protected_rows.store(live->protected_rows.load(relaxed) + protected_rows, relaxed);
    if (observe_.console != nullptr) {
      observe_.console->on_statement(*live, {protected_rows, masked_count, relations});
      if (denied) {
        observe_.console->on_denial({std::chrono::system_clock::now(), id_, live->user, live->client, p.rule,
                                     p.message.empty() ? std::string(sqlstate) : p.message});
      }
    }
  }
}

void RelayConnection::on_server_header(uint8_t type, uint32_t length) {
  if (expect_.empty()) return;
  const Expect head = expect_.front().kind;
  if (AuditPending* a = expect_.front().audit.get()) {
    a->bytes += uint64_t{length} + 1;
    if (type == be::data_row) {
      ++a->rows;
      // A plain store: only this thread writes it.
      if (observe_.live) observe_.live->current_rows.store(a->rows, std::memory_order_relaxed);
      // The per-statement limits, while rows stream: two compares a row.
      if (a->watch.armed() && a->watch.exceeded(a->rows, a->bytes)) detect_limit(*a);
    }
  }
  switch (type) {
    case be::parse_complete:
      if (head == Expect::parse) expect_.pop_front();
      break;
    case be::bind_complete:
      if (head == Expect::bind) expect_.pop_front();
      break;
    case be::close_complete:
      if (head == Expect::close) expect_.pop_front();
      break;
    case be::no_data:
    case be::row_description:
      if (head == Expect::describe) expect_.pop_front();
      break;
    case be::command_complete:
    case be::empty_query_response:
    case be::portal_suspended:
      if (head == Expect::execute) {
        // CommandComplete is held when audited and recorded with its tag
        // (server_frame); the others end the statement here.
        if (type != be::command_complete && expect_.front().audit) {
          audit_statement_done(type == be::portal_suspended ? "" : "EMPTY", "");
        }
        expect_.pop_front();
      }
      break;
    case be::ready_for_query:
      // Nothing of what the client sent is still running.
      if (observe_.live && expect_.size() == 1)
        observe_.live->current_class.store(-1, std::memory_order_relaxed);
      if (head == Expect::query || head == Expect::sync || head == Expect::function_call) {
        if (head == Expect::function_call && expect_.front().audit && observe_) {
          AuditPending& p = *expect_.front().audit;
          observe_emit(p, p.sqlstate);
        }
        if (head == Expect::function_call && expect_.front().audit && audit_) {
          AuditPending& p = *expect_.front().audit;
          AuditEvent ev;
          ev.kind = "function_call";
          ev.session = audit_.session;
          ev.detail = {
              {"function_oid", p.function_oid},
              {"decision", p.decision},
              {"rule", p.rule},
              {"duration_us",
               std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - p.start).count()}};
          if (!p.sqlstate.empty()) ev.detail["sqlstate"] = p.sqlstate;
          audit_last_seq_ = audit_.log->submit(std::move(ev));
        }
        expect_.pop_front();
      }
      break;
    default: break;
  }
}

// A RowDescription: which of its columns are masked here. For a Query sent
// as its output_sql, they must be exactly the ones its plan expects, or no
// row of it reaches the client.
void RelayConnection::result_columns(Bytes body) {
  const Expectation* head = expect_.empty() ? nullptr : &expect_.front();
  if (head == nullptr || !head->output) {
    if (policy_.policy) {
      backstop_columns(body, *policy_.policy, nullptr);
    } else {
      backstop_.clear();
    }
    return;
  }
  output_checked_ = true;
  if (!utf8_client_ || !utf8_server_) {
    // A client_encoding change in the pipe ahead of this statement took
    // effect after it was decided: the masks in rows would not give what
    // the SQL masks give.
    backstop_.clear();
    cut_statement(
        Error::make(sqlstate::object_not_in_prerequisite_state,
                    "pgcloak stopped this statement: the session's client_encoding changed while it "
                    "was on its way, so no row was sent",
                    Severity::error, "Run the statement again."));
    return;
  }
  const uint32_t found = backstop_columns(body, *head->output_policy, head->output.get());
  if (found == head->output->output_fields) return;
  backstop_.clear();
  log::error("output masking: PostgreSQL reported " + std::to_string(found) + " of the " +
                 std::to_string(head->output->output_fields) +
                 " result columns pgcloak expected to mask; the statement was stopped and no row sent",
             id_);
  cut_statement(Error::make(
      sqlstate::internal_error,
      "pgcloak stopped this statement: it could not match the result columns to the "
      "masks they need, so no row was sent",
      Severity::error, "This should not happen; please report the statement to your pgcloak administrator."));
}

// Fills backstop_ from a RowDescription: the columns PostgreSQL reports as
// coming straight from a protected column that `policy` masks or refuses.
// With a plan (output masking), returns how many of them are the plan's
// output-masked columns in text format.
uint32_t RelayConnection::backstop_columns(Bytes body, const rules::SessionPolicy& policy,
                                           const rules::StatementDecision* plan) {
  backstop_.clear();
  auto rd = protocol::RowDescription::decode(body);
  if (!rd) return 0;
  uint32_t planned = 0;
  for (size_t i = 0; i < rd->fields.size(); ++i) {
    const auto& f = rd->fields[i];
    if (f.table_oid == 0) continue;
    const rules::RelationMasks* m = policy.masks_for(f.table_oid);
    if (m == nullptr) continue;
    const auto& cols = m->protection->relation->columns;
    for (size_t k = 0; k < cols.size(); ++k) {
      if (cols[k].attnum != f.column_attnum) continue;
      const bool expected =
          plan != nullptr && f.format == 0 &&
          std::find(plan->output_columns.begin(), plan->output_columns.end(),
                    std::pair<uint32_t, int16_t>{f.table_oid, f.column_attnum}) != plan->output_columns.end();
      if (expected) ++planned;
      if (m->refused[k] || m->specs[k].kind != rules::MaskKind::allow) {
        backstop_.push_back(
            {i, m->specs[k], cols[k].type, m->refused[k], f.format != 0,
             m->protection->relation->schema + "." + m->protection->relation->name + "." + cols[k].name,
             expected, &policy.protection().config().keys});
      }
    }
  }
  return planned;
}

// A DataRow with the backstop_ columns masked, written straight from the
// frame: output masking sends every row of a full scan through here.
void RelayConnection::backstop_row(Bytes frame, Buffer& out) {
  const Bytes body = frame.subspan(5);
  // DataRow (protocol docs, "Message Formats"): Int16 count, then per
  // column Int32 length (-1 = NULL) and that many bytes.
  auto malformed = [&] {
    // Fail closed: a row we cannot read is not forwarded.
    queue_error(Error::protocol("malformed DataRow from PostgreSQL"));
    begin_closing();
  };
  if (body.size() < 2) return malformed();
  const size_t count = protocol::load_u16(body.data());
  const size_t start = out.size();
  out.insert(out.end(), frame.begin(), frame.begin() + 7);  // type, length (patched below), count
  size_t at = 2;
  size_t next = 0;  // backstop_ is in column order
  for (size_t i = 0; i < count; ++i) {
    if (body.size() - at < 4) {
      out.resize(start);
      return malformed();
    }
    const auto len = static_cast<int32_t>(protocol::load_u32(body.data() + at));
    const size_t field_end = len < 0 ? at + 4 : at + 4 + static_cast<size_t>(len);
    if (len < -1 || field_end > body.size()) {
      out.resize(start);
      return malformed();
    }
    while (next < backstop_.size() && backstop_[next].index < i) ++next;
    // A NULL (length -1) is forwarded as it came, byte for byte, like an
    // unmasked column: NULL stays NULL under every mask (mask_sql.h), unless
    // the rule masks NULLs too (mask_nulls), where the SQL mask would have
    // given it redact's constant.
    if (next == backstop_.size() || backstop_[next].index != i ||
        (len < 0 && !backstop_[next].spec.mask_nulls)) {
      out.insert(out.end(), body.begin() + static_cast<std::ptrdiff_t>(at),
                 body.begin() + static_cast<std::ptrdiff_t>(field_end));
      at = field_end;
      continue;
    }
    const BackstopColumn& c = backstop_[next];
    const std::string_view v(reinterpret_cast<const char*>(body.data() + at + 4),
                             len < 0 ? 0 : static_cast<size_t>(len));
    at = field_end;
    std::optional<std::string> masked;
    // Text-format values (and string types, whose binary form is the text)
    // get the configured mask; anything else becomes NULL.
    if (!c.refused && (!c.binary || rules::is_string_type(c.type))) {
      masked = len < 0 ? rules::mask_null_value(c.spec, c.type)
                       : rules::mask_text_value(c.spec, c.type, v, *c.keys);
    }
    const size_t len_at = out.size();
    out.resize(len_at + 4);
    protocol::store_u32(out.data() + len_at, masked ? static_cast<uint32_t>(masked->size()) : 0xffffffffU);
    if (masked) out.insert(out.end(), masked->begin(), masked->end());
    if (c.planned) continue;  // output masking: masked here by design
    observe_.metrics.on_backstop_hit();
    if (backstop_hits_++ == 0 || backstop_hits_ % 10000 == 0) {
      log::warn("backstop: column " + c.name + " reached the client unmasked and was masked in pgcloak (" +
                    std::to_string(backstop_hits_) + " values so far); please report this statement",
                id_);
    }
  }
  if (at != body.size()) {
    out.resize(start);
    return malformed();
  }
  protocol::store_u32(out.data() + start + 1, static_cast<uint32_t>(out.size() - start - 1));
}

// ParameterStatus while masking: output masking follows client_encoding,
// the analysis standard_conforming_strings.
//
// A masked session never gets to an unsafe reading through a route pgcloak
// knows (the analysis refuses them). Should PostgreSQL report one anyway,
// the statements behind the change in the pipe were analysed under the old
// reading: the session is ended, and nothing PostgreSQL sends after the
// report reaches the client.
void RelayConnection::note_parameter(Bytes body) {
  auto ps = protocol::ParameterStatus::decode(body);
  if (!ps) return;
  if (ps->name == "client_encoding") utf8_client_ = ps->value == "UTF8";
  if (ps->name == "server_encoding") utf8_server_ = ps->value == "UTF8";
  const bool was_unsafe = reading_.unsafe_now();
  reading_.note(ps->name, ps->value);
  if (masked_ && !was_unsafe && reading_.unsafe_now()) {
    sealed_ = true;
    log::warn("PostgreSQL reported " + ps->name + " = " + ps->value +
                  " for a masked session; ending it, as statements behind the change were analysed under the "
                  "previous setting",
              id_);
    terminate_with(Error::make(
        sqlstate::feature_not_supported,
        "pgcloak: this masked session's " + ps->name +
            " changed to a value under which PostgreSQL reads statements differently from pgcloak",
        Severity::fatal,
        "Reconnect; masked sessions need standard_conforming_strings = on and a client_encoding such as "
        "UTF8."));
  }
}

void RelayConnection::server_frame(uint8_t type, Bytes frame, Buffer& out) {
  if (sealed_) return;
  const Bytes body = frame.subspan(5);
  if (type == be::row_description) {
    result_columns(body);
    on_server_header(type, static_cast<uint32_t>(frame.size() - 1));
    out.insert(out.end(), frame.begin(), frame.end());
    return;
  }
  if (type == be::data_row) {
    // Counted in the header callback unless held for the backstop.
    if (!cutting_ || !backstop_.empty()) on_server_header(type, static_cast<uint32_t>(frame.size() - 1));
    if (!cutting_ && output_unchecked()) {
      // Output masking: a row before its RowDescription cannot be masked.
      cut_statement(
          Error::make(sqlstate::internal_error,
                      "pgcloak stopped this statement: PostgreSQL sent rows without describing them, "
                      "so pgcloak could not mask them",
                      Severity::error, "Please report the statement to your pgcloak administrator."));
    }
    if (cutting_) return;  // the cancel action: not one more row
    if (backstop_.empty()) {
      out.insert(out.end(), frame.begin(), frame.end());
      return;
    }
    const size_t before = out.size();
    backstop_row(frame, out);
    // Records count the bytes the client got, masked values included.
    if (AuditPending* a = expect_.empty() ? nullptr : expect_.front().audit.get(); a != nullptr) {
      a->bytes = a->bytes + (out.size() - before) - std::min<uint64_t>(a->bytes, frame.size());
    }
    return;
  }
  if (type == be::ready_for_query) {
    backstop_.clear();
    cutting_ = false;
    output_checked_ = false;
    if (body.size() == 1) {
      transaction_status_ = body[0];
      if (pending_ready_ > 0) --pending_ready_;
      // Outside a transaction PostgreSQL has no portals left (they end
      // with their transaction). Only when the client has nothing after
      // this in flight: a pipelined Bind for the next transaction may
      // already be recorded.
      if (transaction_status_ == 'I' && pending_ready_ == 0 && !unsynced_) {
        if (!audit_portals_.empty()) audit_portals_.clear();
        audit_unnamed_portal_.defined = false;
      }
      // DDL becomes visible to the catalog loader when its transaction
      // ends: refresh again now.
      if (ddl_seen_ && transaction_status_ == 'I') {
        ddl_seen_ = false;
        if (hooks_.catalog_changed) hooks_.catalog_changed();
      }
    }
    on_server_header(type, static_cast<uint32_t>(frame.size() - 1));
    audit_hold_ready();
    out.insert(out.end(), frame.begin(), frame.end());
    return;
  }
  if (type == be::command_complete) {
    if (cutting_ && !expect_.empty() && expect_.front().refusal) {
      // The statement finished before the cancel reached it: the client
      // still gets the rule's error, not the tag of a partial result.
      cutting_ = false;
      const Error e = *expect_.front().refusal;
      expect_.front().refusal.reset();
      if (expect_.front().audit) audit_statement_done("", sqlstate::query_canceled);
      on_server_header(type, 0);
      protocol::ErrorResponse::from_error(e).encode(out);
      return;
    }
    // Held only when audited: the tag ends the head statement's record.
    if (!expect_.empty() && expect_.front().audit) {
      expect_.front().audit->bytes += frame.size();
      auto cc = protocol::CommandComplete::decode(body);
      audit_statement_done(cc ? std::string_view(cc->tag) : std::string_view(), "");
    }
    on_server_header(type, 0);
    out.insert(out.end(), frame.begin(), frame.end());
    return;
  }
  if (type == be::error_response && !expect_.empty()) {
    cutting_ = false;  // a cut statement ends here (57014 from the cancel)
    if (expect_.front().audit) {
      std::string code;
      if (expect_.front().refusal) {
        code = std::string(expect_.front().refusal->sqlstate);
      } else if (auto e = protocol::ErrorResponse::decode(body)) {
        if (const std::string* c = e->find(protocol::field::sqlstate)) code = *c;
      }
      expect_.front().audit->bytes += frame.size();
      audit_statement_done("", code.empty() ? std::string_view("XX000") : std::string_view(code));
    }
    Expectation head = std::move(expect_.front());
    const bool simple =
        head.kind == Expect::query || head.kind == Expect::function_call || head.kind == Expect::sync;
    if (!simple) {
      // Extended protocol: this message failed and PostgreSQL skips the
      // rest up to Sync, so their responses will not come. Names the failed
      // and skipped Parses bound go back to what they were, last first.
      std::vector<Expectation::Binding> rebind;
      if (head.rebind_on_error) rebind.push_back(std::move(*head.rebind_on_error));
      expect_.pop_front();
      while (!expect_.empty() && expect_.front().kind != Expect::sync) {
        if (expect_.front().rebind_on_error) rebind.push_back(std::move(*expect_.front().rebind_on_error));
        expect_.pop_front();
      }
      for (auto it = rebind.rbegin(); it != rebind.rend(); ++it) restore_binding(*it);
    } else {
      expect_.front().refusal.reset();  // one error per Query; the rest of it is PostgreSQL's
    }
    if (head.refusal) {
      protocol::ErrorResponse::from_error(*head.refusal).encode(out);
      return;
    }
  }
  if (type == be::parameter_status) {
    note_parameter(body);
    if (sealed_) return;
  }
  if (masked_ && type == be::notice_response && !client_notice(body)) return;
  if (masked_ && (type == be::error_response || type == be::notice_response)) {
    std::optional<protocol::NoticeFields> fields;
    if (type == be::error_response) {
      if (auto e = protocol::ErrorResponse::decode(body)) fields = std::move(*e);
    } else if (auto nr = protocol::NoticeResponse::decode(body)) {
      fields = std::move(*nr);
    }
    if (!fields) {
      out.insert(out.end(), frame.begin(), frame.end());
      return;
    }
    bool scrubbed = false;
    for (auto& [code, value] : fields->fields) {
      if (code == protocol::field::detail && detail_may_hold_values(value)) {
        value = "[pgcloak removed this detail: it can contain values of protected columns]";
        scrubbed = true;
      }
    }
    if (!scrubbed) {
      out.insert(out.end(), frame.begin(), frame.end());
      return;
    }
    if (type == be::error_response) {
      protocol::ErrorResponse e;
      e.fields = std::move(fields->fields);
      e.encode(out);
    } else {
      protocol::NoticeResponse nr;
      nr.fields = std::move(fields->fields);
      nr.encode(out);
    }
    return;
  }
  out.insert(out.end(), frame.begin(), frame.end());
}

bool RelayConnection::from_server(Bytes chunk) {
  bool ended_ready = false;
  Error violation;
  const bool tracking = masked_ || recording() || !expect_.empty();
  auto st = server_frames_.feed(
      chunk, client_.out,
      [&](uint8_t type, uint32_t length) {
        if (!backend_types[type]) {
          violation = Error::protocol("invalid message type " + printable_type(type) + " from PostgreSQL");
          return protocol::FrameAction::reject;
        }
        if (sealed_) return protocol::FrameAction::hold;  // dropped in server_frame
        ended_ready = type == be::ready_for_query;
        last_server_type_ = type;
        if (type == be::ready_for_query) return protocol::FrameAction::hold;
        // Output masking follows client_encoding (note_parameter).
        if (type == be::parameter_status && hooks_) return protocol::FrameAction::hold;
        if (tracking) {
          // RowDescription only matters to the backstop, which only masked
          // sessions have.
          if (type == be::error_response || type == be::notice_response ||
              (type == be::row_description && policy_.policy)) {
            return protocol::FrameAction::hold;
          }
          if (type == be::data_row && (!backstop_.empty() || output_unchecked()))
            return protocol::FrameAction::hold;
          if (type == be::command_complete && (recording() || cutting_)) return protocol::FrameAction::hold;
          on_server_header(type, length);
          // A cut statement's rows (from the one that crossed the limit on)
          // are held here and dropped in server_frame.
          if (type == be::data_row && cutting_) return protocol::FrameAction::hold;
        }
        return protocol::FrameAction::pass;
      },
      [&](uint8_t type, Bytes frame, Buffer& out) {
        if (type == be::ready_for_query && frame.size() != 6) {
          violation = Error::protocol("malformed ReadyForQuery from PostgreSQL");
        }
        server_frame(type, frame, out);
      },
      violation);
  if (!st || !violation.message.empty()) {
    const Error& e = st ? violation : st.error();
    log::warn("closing session: " + e.message, id_);
    queue_error(e);
    begin_closing();
    return false;
  }
  server_at_ready_ = ended_ready && server_frames_.at_boundary();
  if (terminate_later_ && server_frames_.output_at_boundary()) {
    const Error e = *terminate_later_;
    terminate_later_.reset();
    terminate_with(e);
    return false;
  }
  if (draining_ && idle() && transaction_status_ == 'I') {
    terminate_with(Error::make(sqlstate::admin_shutdown,
                               "terminating connection because pgcloak is shutting down", Severity::fatal,
                               "Reconnect in a moment."));
  }
  return true;
}

// --- endings ----------------------------------------------------------------

void RelayConnection::begin_closing() {
  if (closing_) return;
  closing_ = true;
  closing_since_ = Clock::now();
}

bool RelayConnection::recyclable() const {
  // A batched read that took PostgreSQL's bytes off the socket and that the
  // pump has not relayed yet would be lost to the next client.
  const bool upstream_bytes_held = (upstream_.staged && upstream_.staged_res > 0) || !upstream_.carry.empty();
  return recycle_ && !draining_ && !upstream_.dead && !terminate_sent_ && !closing_ && idle() &&
         !upstream_bytes_held && transaction_status_ == 'I' && !unsynced_ && server_frames_.at_boundary() &&
         !cutting_ && !cancel_in_flight_ && !terminate_later_;
}

void RelayConnection::client_gone() {
  client_.dead = true;
  client_.out.clear();
  client_.out_begin = 0;
  // Session pooling: an idle client that just went away leaves a reusable
  // backend (the Terminate has not been forwarded).
  if (recyclable()) {
    recycle_now_ = true;
    terminate_sent_ = true;
    close_now();
    return;
  }
  // The client vanished without Terminate; end the backend cleanly rather
  // than leave PostgreSQL to notice a reset.
  if (!terminate_sent_ && !upstream_.dead && client_frames_.at_boundary()) {
    terminate_sent_ = true;
    upstream_.append(Bytes(terminate_message));
    int err = 0;
    flush(upstream_, err);  // best effort: the session is over either way
  }
  close_now();
}

void RelayConnection::upstream_gone(bool error, int err) {
  upstream_.dead = true;
  upstream_.out.clear();
  upstream_.out_begin = 0;
  if (!terminate_sent_ && !closing_) {
    log::info(std::string("PostgreSQL closed the connection") +
                  (error ? ": " + std::string(std::strerror(err)) : ""),
              id_);
    // Whatever PostgreSQL said before closing (e.g. FATAL 57P01) is already
    // queued; if it closed mid-message or mid-statement the client still
    // needs a proper error.
    if (!server_frames_.at_boundary()) {
      queue_error(Error::make(sqlstate::connection_failure,
                              "the connection to PostgreSQL was lost in the middle of a message",
                              Severity::fatal));
    } else if ((!server_at_ready_ || pending_ready_ > 0) && last_server_type_ != be::error_response) {
      queue_error(Error::make(
          sqlstate::connection_failure, "the connection to PostgreSQL was lost while a statement was running",
          Severity::fatal, "Retry the statement; if it keeps failing, check the PostgreSQL server log."));
    }
  }
  begin_closing();
}

void RelayConnection::terminate_with(const Error& reason) {
  if (closing_ || closed_) return;
  log::info("terminating session: " + reason.message, id_);
  queue_error(reason);
  if (!terminate_sent_ && !upstream_.dead && client_frames_.at_boundary()) {
    terminate_sent_ = true;
    upstream_.append(Bytes(terminate_message));
  }
  terminate_sent_ = true;
  begin_closing();
}

void RelayConnection::drain() {
  draining_ = true;
  if (idle() && transaction_status_ == 'I') {
    terminate_with(Error::make(sqlstate::admin_shutdown,
                               "terminating connection because pgcloak is shutting down", Severity::fatal,
                               "Reconnect in a moment."));
  }
}

void RelayConnection::tick(Clock::time_point now) {
  if (closed_) return;
  if (closing_) {
    if (now - closing_since_ >= close_linger) close_now();
    return;
  }
  if (client_idle_.count() > 0 && now - last_activity_ >= client_idle_ && idle()) {
    terminate_with(Error::make(sqlstate::idle_session_timeout,
                               "terminating connection due to client idle timeout", Severity::fatal,
                               "pgcloak closes sessions idle for longer than timeouts.client_idle (" +
                                   std::to_string(client_idle_.count()) + " ms)."));
  }
}

void RelayConnection::close_now() {
  if (closed_) return;
  closed_ = true;
  if (client_.ssl && !client_.dead) {
    // PostgreSQL ends TLS with close_notify, so clients tell a deliberate
    // close from a truncated stream; one non-blocking attempt.
    ERR_clear_error();
    SSL_shutdown(client_.ssl.get());
    ERR_clear_error();
    if (client_.mem()) {
      collect_cipher(client_);
      int err = 0;
      (void)send_cipher_now(client_, err);
    }
  }
  if (recycle_now_ && recycle_ && upstream_.fd >= 0 && !upstream_.dead && upstream_.pending() == 0) {
    epoll_ctl(loop_.epoll_fd_, EPOLL_CTL_DEL, upstream_.fd, nullptr);
    DetachedStream kept;
    kept.fd = upstream_.fd;
    kept.ssl = std::move(upstream_.ssl);
    kept.is_unix = upstream_is_unix_;
    upstream_.fd = -1;
    recycle_(std::move(kept));
  }
  for (Side* s : {&client_, &upstream_}) {
    if (s->fd >= 0) {
      epoll_ctl(loop_.epoll_fd_, EPOLL_CTL_DEL, s->fd, nullptr);
      s->ssl.reset();
      ::close(s->fd);
      s->fd = -1;
    }
  }
  if (recording()) {
    // Statements still running when the session ended are recorded too:
    // the trail must show what was attempted, not only what finished.
    for (auto& e : expect_) {
      if (e.audit && (e.kind == Expect::query || e.kind == Expect::execute)) {
        audit_emit(*e.audit, "", sqlstate::connection_failure);
      }
    }
    expect_.clear();
  }
  if (audit_) {
    AuditEvent ev;
    ev.kind = "disconnect";
    ev.session = audit_.session;
    ev.detail = {{"statements", audit_statement_count_},
                 {"rows", audit_rows_},
                 {"bytes", audit_bytes_},
                 {"duration_ms",
                  std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started_).count()}};
    audit_.log->submit(std::move(ev));
  }
  loop_.retire(this);
  if (on_closed_) {
    auto cb = std::move(on_closed_);
    on_closed_ = nullptr;
    cb();
  }
}

// --- handle -------------------------------------------------------------------

void RelayHandle::drain() {
  loop_.post([c = conn_] {
    if (auto conn = c.lock()) {
      conn->drain();
      conn->pump();
    }
  });
}

void RelayHandle::terminate(Error reason) {
  loop_.post([c = conn_, reason = std::move(reason)] {
    if (auto conn = c.lock()) {
      conn->terminate_with(reason);
      conn->pump();
    }
  });
}

// --- loop -----------------------------------------------------------------------

RelayLoop::RelayLoop() : rx_(rx_size), decisions_(decision_cache_bytes) {}

RelayLoop::~RelayLoop() {
  stop();
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
  if (event_fd_ >= 0) ::close(event_fd_);
}

Status RelayLoop::start(bool batch_io) {
  if (batch_io) {
    auto b = IoBatch::create(batch_entries);
    if (b) {
      batch_ = std::move(*b);
      slots_ = std::make_unique_for_overwrite<uint8_t[]>(batch_slots * batch_slot_size);
    } else {
      batch_error_ = b.error().message;
    }
  }
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epoll_fd_ < 0 || event_fd_ < 0) {
    return Error::make(sqlstate::internal_error,
                       std::string("cannot create the relay loop: ") + std::strerror(errno));
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // the wake-up descriptor
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, event_fd_, &ev) != 0) {
    return Error::make(sqlstate::internal_error,
                       std::string("cannot create the relay loop: ") + std::strerror(errno));
  }
  thread_ = std::thread([this] { run(); });
  return ok_status();
}

void RelayLoop::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  const uint64_t one = 1;
  [[maybe_unused]] auto r = ::write(event_fd_, &one, sizeof one);
  thread_.join();
}

void RelayLoop::post(std::function<void()> task) {
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    wake = posted_.empty();
    posted_.push_back(std::move(task));
  }
  if (wake) {
    const uint64_t one = 1;
    [[maybe_unused]] auto r = ::write(event_fd_, &one, sizeof one);
  }
}

std::shared_ptr<RelayHandle> RelayLoop::adopt(RelayStart start) {
  auto conn = std::make_shared<RelayConnection>(*this, std::move(start));
  auto handle = std::make_shared<RelayHandle>(*this, conn);
  count_.fetch_add(1, std::memory_order_relaxed);
  post([this, conn] {
    conns_.push_back(conn);
    if (conn->open() && conn->pump()) again_.push_back(conn.get());
  });
  return handle;
}

void RelayLoop::retire(RelayConnection* conn) {
  // Called from inside the connection: keep it alive until the pass ends.
  auto it = std::find_if(conns_.begin(), conns_.end(), [&](const auto& c) { return c.get() == conn; });
  if (it != conns_.end()) {
    retired_.push_back(std::move(*it));
    *it = std::move(conns_.back());
    conns_.pop_back();
    count_.fetch_sub(1, std::memory_order_relaxed);
  }
  std::erase(again_, conn);
}

void RelayLoop::await_durable(AuditLog& log, const std::shared_ptr<RelayConnection>& conn, uint64_t seq) {
  durable_waiters_.emplace_back(seq, conn);
  // One registration at a time: durable_progress() releases everything the
  // fsync covered and registers again for the highest record still
  // waiting. Registering per record (whenever a later seq came) made every
  // fsync wake the loop once per waiting record.
  if (durable_registered_ != 0) return;
  durable_registered_ = seq;
  log.on_durable(seq, [this, &log](bool ok) {
    if (ok) post([this, &log] { durable_progress(log); });
  });
}

// Runs on the loop thread after the writer reported progress.
void RelayLoop::durable_progress(AuditLog& log) {
  const uint64_t durable = log.durable_seq();
  durable_registered_ = 0;
  uint64_t highest = 0;
  std::vector<std::shared_ptr<RelayConnection>> released;
  std::erase_if(durable_waiters_, [&](const auto& w) {
    auto conn = w.second.lock();
    if (!conn || conn->closed()) return true;
    if (w.first <= durable) {
      released.push_back(std::move(conn));
      return true;
    }
    highest = std::max(highest, w.first);
    return false;
  });
  for (auto& c : released) {
    c->audit_durable(durable);
    if (!c->closed() && c->pump()) again_.push_back(c.get());
  }
  // Still waiting (the log failed, or more records came meanwhile).
  if (highest > 0) {
    // A failed log (ok = false) is not retried here: those sessions keep
    // waiting, fail closed, until they end.
    durable_registered_ = highest;
    log.on_durable(highest, [this, &log](bool ok) {
      if (ok) post([this, &log] { durable_progress(log); });
    });
  }
}

void RelayLoop::run_posted() {
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard lock(mu_);
    tasks.swap(posted_);
  }
  for (auto& t : tasks) t();
}

void RelayLoop::tick(Clock::time_point now) {
  // Copy: ticking may retire connections.
  std::vector<std::shared_ptr<RelayConnection>> all = conns_;
  for (auto& c : all) {
    c->tick(now);
    if (!c->closed() && c->pump()) again_.push_back(c.get());
  }
}

void RelayLoop::pump_ready(std::vector<RelayConnection*>& ready) {
  // Reads first, all in one call; then each session's pump takes its
  // staged bytes as if it had read them itself.
  unsigned used = 0;
  staged_.clear();
  for (RelayConnection* c : ready) {
    if (used == batch_slots) break;
    if (c->closed()) continue;
    const unsigned n =
        c->stage_reads(*batch_, staged_.size(), slots_.get() + (used * batch_slot_size), batch_slots - used);
    if (n == 0) continue;
    staged_.push_back(c);
    used += n;
  }
  if (!staged_.empty()) {
    for (const auto& done : batch_->run()) staged_[done.tag >> 1U]->staged_result(done.tag & 1U, done.res);
  }
  for (RelayConnection* c : ready) {
    if (!c->closed() && c->pump()) again_.push_back(c);
  }
  for (RelayConnection* c : staged_) c->keep_staged();
}

void RelayLoop::flush_sends() {
  // A pump run with the results may queue more (a read it had to stop for
  // backpressure, then a send); a few rounds, then the next pass.
  for (int round = 0; round < 4 && !send_queue_.empty(); ++round) {
    std::vector<std::shared_ptr<RelayConnection>> queue;
    queue.swap(send_queue_);
    size_t next = 0;
    while (next < queue.size()) {
      const size_t first = next;
      for (; next < queue.size() && batch_->size() + 2 <= batch_->capacity(); ++next) {
        queue[next]->queue_sends(*batch_, next);
      }
      for (const auto& done : batch_->run()) queue[done.tag >> 1U]->sent((done.tag & 1U) != 0, done.res);
      for (size_t i = first; i < next; ++i) queue[i]->settle_sends();
      for (size_t i = first; i < next; ++i) {
        RelayConnection* c = queue[i].get();
        if (c->closed() || std::find(again_.begin(), again_.end(), c) != again_.end()) continue;
        if (c->pump()) again_.push_back(c);
      }
    }
  }
}

void RelayLoop::run() {
  std::array<epoll_event, 256> events{};
  for (;;) {
    // Batched I/O: whatever the last pass queued goes out before sleeping.
    if (batch_) flush_sends();
    int timeout = again_.empty() && send_queue_.empty() ? static_cast<int>(tick_interval.count()) : 0;
    const int n = epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()), timeout);
    if (n < 0 && errno != EINTR) {
      log::error(std::string("relay loop: epoll_wait failed: ") + std::strerror(errno));
      break;
    }
    // Connections that used up their budget last pass go first, once.
    std::vector<RelayConnection*> again;
    again.swap(again_);
    for (RelayConnection* c : again) {
      if (!c->closed() && c->pump()) again_.push_back(c);
    }
    ++epoch_;
    ready_.clear();
    for (int i = 0; i < n; ++i) {
      auto* tag = static_cast<RelayConnection::Tag*>(events[i].data.ptr);
      if (tag == nullptr) {
        uint64_t v = 0;
        [[maybe_unused]] auto r = ::read(event_fd_, &v, sizeof v);
        continue;
      }
      RelayConnection* c = tag->conn;
      if (c->closed()) continue;
      c->on_event(tag->upstream, events[i].events);
      if (std::find(again_.begin(), again_.end(), c) != again_.end()) continue;
      if (batch_) {
        // Both sides' events first; the session is pumped once, below.
        if (c->epoch != epoch_) {
          c->epoch = epoch_;
          ready_.push_back(c);
        }
        continue;
      }
      if (c->pump()) again_.push_back(c);
    }
    if (batch_ && !ready_.empty()) pump_ready(ready_);
    run_posted();
    const auto now = Clock::now();
    if (now >= next_tick_) {
      next_tick_ = now + tick_interval;
      tick(now);
    }
    // A session retired this pass with a send queued stays alive in
    // send_queue_ (shared), and queue_sends skips it as closed.
    retired_.clear();
    bool stop = false;
    {
      std::lock_guard lock(mu_);
      stop = stopping_;
    }
    if (stop) break;
  }
  run_posted();
  // What the last tasks queued (e.g. a shutdown's ErrorResponse) still goes.
  if (batch_) flush_sends();
  std::vector<std::shared_ptr<RelayConnection>> all = conns_;
  for (auto& c : all) c->close_now();
  retired_.clear();
}

// --- pool -----------------------------------------------------------------------

Status RelayPool::start(unsigned loops, bool batch_io) {
  for (unsigned i = 0; i < std::max(1U, loops); ++i) {
    loops_.push_back(std::make_unique<RelayLoop>());
    if (auto st = loops_.back()->start(batch_io); !st) return st;
  }
  return ok_status();
}

void RelayPool::stop() {
  for (auto& l : loops_) l->stop();
}

RelayLoop& RelayPool::pick() {
  RelayLoop* best = loops_.front().get();
  for (auto& l : loops_) {
    if (l->size() < best->size()) best = l.get();
  }
  return *best;
}

}  // namespace pgcloak::proxy
