// The running server: io threads, listeners, signals and shutdown.
// One io_context per thread (as PgBouncer-style poolers and Odyssey run one
// loop per worker): a session lives on one thread for its whole life, so its
// coroutines never need locks or strands.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "protocol/result.h"
#include "proxy/asio.h"
#include "proxy/server_state.h"
#include "rules/config.h"

namespace pgcloak::proxy {

class Server {
 public:
  // config_path: where SIGHUP re-reads the configuration from ("" = no reload).
  explicit Server(rules::Config config, std::string config_path = {});
  ~Server();

  // Builds TLS contexts and binds every listener; errors name what failed.
  Status start();
  // Runs until SIGTERM/SIGINT and the drain that follows; returns the exit code.
  int run();

 private:
  awaitable<void> accept_tcp(tcp::acceptor& acceptor);
  awaitable<void> accept_unix(unix_stream::acceptor& acceptor);
  awaitable<void> handle_signals();
  void reload_config();
  Status open_audit();
  // Metrics, the console and the HTTP endpoint serving them, on their own
  // thread so that a scrape never delays a session.
  Status open_metrics();
  void add_http_routes();
  std::string not_ready_reason() const;
  awaitable<void> probe_upstream();
  void stop_http();
  void note_reload(std::string_view result, const std::string& reason);
  // Exfiltration detection (docs/detection.md): the detector with its saved
  // state, the alert sinks, and the state saved every save_interval.
  Status open_detection();
  awaitable<void> save_detection_state_periodically();
  void save_detection_state();
  awaitable<void> shutdown();
  void start_session(std::unique_ptr<class Stream> stream, asio::io_context& ctx);
  asio::io_context& next_worker();
  awaitable<void> reject(std::unique_ptr<class Stream> stream, Error error);

  ServerState state_;
  std::vector<std::unique_ptr<asio::io_context>> workers_;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards_;
  std::vector<std::unique_ptr<tcp::acceptor>> tcp_acceptors_;
  std::unique_ptr<unix_stream::acceptor> unix_acceptor_;
  std::string unix_socket_path_;
  std::unique_ptr<asio::signal_set> signals_;
  std::string config_path_;
  std::unique_ptr<asio::io_context> http_ctx_;
  std::unique_ptr<class HttpEndpoint> http_;
  std::thread http_thread_;
  std::mutex detection_save_mu_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  size_t next_worker_ = 0;
  int exit_code_ = 0;
};

}  // namespace pgcloak::proxy
