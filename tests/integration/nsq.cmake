# NSQ: ferry's own client against the protocol-level test peer (tests/nsq_peer).
#
# The nsq:// conformance entry (tests/conformance/nsq_test.cpp) and the wire codec's unit
# test (tests/unit/nsq_frame_test.cpp) are globbed into the suites of tests/CMakeLists.txt;
# they need ferry_nsq, the peer and the codec's private header.
target_link_libraries(ferry_conformance_tests PRIVATE ferry_nsq ferry_nsq_peer ferry_test_certificates)
target_link_libraries(ferry_unit_tests PRIVATE ferry_nsq)
target_include_directories(ferry_unit_tests PRIVATE ${PROJECT_SOURCE_DIR}/src/backends/nsq)

# The client and the peer at the protocol level (no ferry binary needed).
# nsq_tls_test.cpp: TLS (IDENTIFY tls_v1) with certificates made by openssl at test time.
add_executable(ferry_nsq_integration_tests nsq_client_test.cpp nsq_peer_test.cpp nsq_tls_test.cpp)
target_include_directories(ferry_nsq_integration_tests PRIVATE ${PROJECT_SOURCE_DIR}/src/backends/nsq)
target_compile_definitions(ferry_nsq_integration_tests PRIVATE BOOST_ASIO_NO_DEPRECATED)
target_link_libraries(ferry_nsq_integration_tests PRIVATE ferry_nsq ferry_nsq_peer ferry_core ferry_test_certificates
                      GTest::gtest_main Boost::json ferry_warnings)
gtest_discover_tests(ferry_nsq_integration_tests DISCOVERY_TIMEOUT 60 PROPERTIES LABELS integration TIMEOUT 120)

# `ferry serve` / `ferry consume --broker nsq://...` as processes against a peer in the test.
# (One label per test: gtest_discover_tests splits a list of labels into separate
# arguments. Select the NSQ tests with ctest -R "^Nsq" or -R "nsq/".)
add_executable(ferry_nsq_serve_tests nsq_serve_test.cpp ${PROJECT_SOURCE_DIR}/tests/e2e/e2e_support.cpp)
target_include_directories(ferry_nsq_serve_tests PRIVATE ${PROJECT_SOURCE_DIR}/tests/e2e ${PROJECT_SOURCE_DIR}/tests/support)
target_compile_definitions(ferry_nsq_serve_tests PRIVATE FERRY_BINARY="$<TARGET_FILE:ferry>" BOOST_ASIO_NO_DEPRECATED)
target_link_libraries(ferry_nsq_serve_tests PRIVATE ferry_nsq_peer GTest::gtest_main Boost::json SQLite::SQLite3
                      Threads::Threads ferry_warnings)
add_dependencies(ferry_nsq_serve_tests ferry)
gtest_discover_tests(ferry_nsq_serve_tests DISCOVERY_TIMEOUT 60 PROPERTIES LABELS e2e TIMEOUT 120)
