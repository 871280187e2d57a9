// The Asio vocabulary used across proxy/: coroutines with as_tuple for
// expected conditions (EOF, reset, cancel) so that only real bugs throw.
#pragma once

#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/ssl.hpp>

namespace pgcloak {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
using asio::awaitable;
using boost::system::error_code;
using tcp = asio::ip::tcp;
using unix_stream = asio::local::stream_protocol;

inline constexpr auto use_nothrow = asio::as_tuple(asio::use_awaitable);

}  // namespace pgcloak
