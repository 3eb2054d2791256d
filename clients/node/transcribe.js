#!/usr/bin/env node
// Minimal Node.js client for voice.v1.RecognitionService (speech to text, served by the gateway process on its
// port): Recognize for a whole WAV or Ogg-Opus file, or with --stream the bidirectional StreamingRecognize, fed with
// the samples of a PCM16 WAV file in 100 ms chunks (as fast as possible, or at real-time pace with --realtime).
// Prints one line per utterance (its final transcript) on stdout; the timing line goes to stderr. The .proto files
// are loaded at run time from the same copy synthesize.js uses.
//
//   voice-transcribe FILE [--target 127.0.0.1:50051] [--model NAME] [--language en-US] [--words] [--json]
//                    [--stream [--interim] [--single-utterance] [--realtime]] [--token TOKEN] [--tls]
//                    [--timeout 120] [--max-retries 3]
//
// --words asks for word timings and prints each word under its line as '  START END WORD' (seconds). --json prints
// the RecognizeResponse as JSON (with --stream, each StreamingRecognizeResponse on a line of its own). --interim
// prints interim results too: on a terminal they overwrite the line, else they are lines starting '[interim] '.
//
// Retries (RetryInfo, before any response) and the exit status are those of synthesize.js: 0 ok, 1 local error,
// 2 bad arguments or INVALID_ARGUMENT, 3 NOT_FOUND, 4 FAILED_PRECONDITION, 5 UNAVAILABLE/DEADLINE_EXCEEDED,
// 6 RESOURCE_EXHAUSTED, 7 UNAUTHENTICATED/PERMISSION_DENIED, 8 other gRPC errors.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const {
  EXIT_CODES,
  UsageError,
  protoRoot,
  statusDetails,
  retryDelay,
  statusName,
  endLine,
  seconds,
} = require('./synthesize.js');

const CHUNK_SECONDS = 0.1;

function usage() {
  return [
    'usage: voice-transcribe FILE [options]   (or: node transcribe.js FILE ...)',
    '  FILE                 WAV or Ogg-Opus (with --stream: a PCM16 WAV, mono)',
    '  --target HOST:PORT   gateway address (env VOICE_TARGET, default 127.0.0.1:50051)',
    '  --model NAME         recognition model (default: the server\'s)',
    '  --language CODE      BCP-47 language, e.g. en-US (default: the model\'s)',
    '  --words              word timings, printed as "  START END WORD" under each line',
    '  --json               print the response(s) as JSON',
    '  --stream             StreamingRecognize: send the samples in 100 ms chunks',
    '  --interim            with --stream: print interim results too',
    '  --single-utterance   with --stream: stop after the first utterance',
    '  --realtime           with --stream: send the audio at real-time pace',
    '  --token TOKEN        bearer token (env VOICE_TOKEN)',
    '  --tls                use TLS with the system roots',
    '  --timeout SECONDS    deadline for the whole call, retries included (default 120)',
    '  --max-retries N      retries of a call refused with a RetryInfo delay (env VOICE_MAX_RETRIES, default 3)',
  ].join('\n');
}

function parseCommandLine(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      target: { type: 'string', default: process.env.VOICE_TARGET || '127.0.0.1:50051' },
      model: { type: 'string', default: '' },
      language: { type: 'string', default: '' },
      words: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      stream: { type: 'boolean', default: false },
      interim: { type: 'boolean', default: false },
      'single-utterance': { type: 'boolean', default: false },
      realtime: { type: 'boolean', default: false },
      token: { type: 'string', default: process.env.VOICE_TOKEN || '' },
      tls: { type: 'boolean', default: false },
      timeout: { type: 'string', default: '120' },
      'max-retries': { type: 'string', default: process.env.VOICE_MAX_RETRIES || '3' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(usage());
    process.exit(0);
  }
  if (positionals.length !== 1) throw new UsageError('give exactly one audio FILE');
  const timeout = Number.parseFloat(values.timeout);
  if (!(timeout > 0) || !Number.isFinite(timeout)) {
    throw new UsageError('--timeout must be a positive number of seconds');
  }
  const maxRetries = Number(values['max-retries']);
  if (!Number.isInteger(maxRetries) || maxRetries < 0) throw new UsageError('--max-retries must be 0 or more');
  for (const flag of ['interim', 'single-utterance', 'realtime']) {
    if (values[flag] && !values.stream) throw new UsageError(`--${flag} needs --stream`);
  }
  return { ...values, file: positionals[0], timeout, maxRetries, singleUtterance: values['single-utterance'] };
}

function loadService() {
  const root = protoRoot();
  const definition = protoLoader.loadSync(path.join(root, 'voice/v1/recognition.proto'), {
    includeDirs: [root],
    keepCase: true, // proto field names, as voice-cli --json and grpcurl print them
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).voice.v1.RecognitionService;
}

function readAudio(file) {
  let data;
  try {
    data = fs.readFileSync(file);
  } catch (error) {
    const reasons = { ENOENT: 'No such file or directory', EISDIR: 'Is a directory', EACCES: 'Permission denied' };
    throw new UsageError(`cannot read ${file}: ${reasons[error.code] || error.message}`);
  }
  if (!data.length) throw new UsageError(`cannot read ${file}: the file is empty`);
  return data;
}

// The samples of a PCM16 WAV: { rate, pcm } (mono PCM16 only; a UsageError for anything else).
function wavSamples(file, data) {
  if (data.toString('ascii', 0, 4) !== 'RIFF' || data.toString('ascii', 8, 12) !== 'WAVE') {
    throw new UsageError(`cannot read ${file}: --stream needs a WAV file`);
  }
  let offset = 12;
  let fmt = null;
  while (offset + 8 <= data.length) {
    const id = data.toString('ascii', offset, offset + 4);
    let size = data.readUInt32LE(offset + 4);
    const body = offset + 8;
    if (id === 'fmt ') {
      fmt = { format: data.readUInt16LE(body), channels: data.readUInt16LE(body + 2),
        rate: data.readUInt32LE(body + 4), bits: data.readUInt16LE(body + 14) };
    } else if (id === 'data') {
      if (size === 0xffffffff || body + size > data.length) size = data.length - body; // a streamed WAV
      if (!fmt || fmt.format !== 1 || fmt.bits !== 16 || fmt.channels !== 1) {
        throw new UsageError(`cannot read ${file}: --stream needs mono PCM16 WAV`);
      }
      return { rate: fmt.rate, pcm: data.subarray(body, body + size - (size % 2)) };
    }
    offset = body + size + (size % 2);
  }
  throw new UsageError(`cannot read ${file}: no data chunk`);
}

// Final transcripts one line each; interim ones overwrite the line on a terminal, else '[interim] ' lines.
class Printer {
  constructor(options) {
    this.options = options;
    this.tty = Boolean(process.stdout.isTTY);
    this.open = false;
  }

  result(result) {
    const best = result.alternatives[0] || { transcript: '', words: [] };
    if (!result.is_final) {
      if (!this.options.interim) return;
      if (this.tty) {
        process.stdout.write(`\r\x1b[K${best.transcript}`);
        this.open = true;
      } else {
        process.stdout.write(`[interim] ${best.transcript}\n`);
      }
      return;
    }
    let text = `${this.open ? '\r\x1b[K' : ''}${best.transcript}\n`;
    this.open = false;
    if (this.options.words) {
      for (const word of best.words) {
        text += `  ${seconds(word.start_offset).toFixed(3).padStart(7)} ${seconds(word.end_offset).toFixed(3).padStart(7)}  ${word.word}\n`;
      }
    }
    process.stdout.write(text);
  }
}

function recognitionConfig(options) {
  return { model: options.model, language_code: options.language, enable_word_time_offsets: options.words };
}

function recognizeOnce(client, options, metadata, deadline) {
  const data = readAudio(options.file);
  const magic = data.toString('ascii', 0, 4);
  if (magic !== 'RIFF' && magic !== 'OggS') throw new UsageError(`cannot read ${options.file}: not a WAV or Ogg file`);
  const encoding = magic === 'RIFF' ? 'AUDIO_ENCODING_WAV' : 'AUDIO_ENCODING_OGG_OPUS';
  const request = { config: recognitionConfig(options), audio: { audio: data, format: { encoding } } };
  return new Promise((resolve, reject) => {
    client.recognize(request, metadata, { deadline }, (error, response) => {
      if (error) {
        reject(error);
        return;
      }
      if (options.json) process.stdout.write(`${JSON.stringify(response, null, 2)}\n`);
      else {
        const printer = new Printer(options);
        response.results.forEach((result) => printer.result(result));
      }
      resolve({
        utterances: response.results.length,
        audioSeconds: seconds(response.audio_duration),
        model: response.model,
        requestId: response.request_id,
      });
    });
  });
}

function streamOnce(client, options, metadata, deadline, audio) {
  return new Promise((resolve, reject) => {
    const call = client.streamingRecognize(metadata, { deadline });
    const printer = new Printer(options);
    const step = Math.max(1, Math.round(audio.rate * CHUNK_SECONDS)) * 2;
    let responses = 0;
    let finals = 0;
    let received = 0;
    let requestId = '';
    let timer = null;
    let sentAt = null;
    let lastFinalAt = null;
    call.write({
      config: {
        config: recognitionConfig(options),
        audio_format: { encoding: 'AUDIO_ENCODING_PCM16', sample_rate_hz: audio.rate, channels: 1 },
        interim_results: options.interim,
        single_utterance: options.singleUtterance,
      },
    });
    const start = Date.now();
    let index = 0;
    const next = () => {
      while (index * step < audio.pcm.length) {
        call.write({ audio: audio.pcm.subarray(index * step, (index + 1) * step) });
        index += 1;
        if (options.realtime) {
          timer = setTimeout(next, Math.max(0, start + index * CHUNK_SECONDS * 1000 - Date.now()));
          return;
        }
      }
      sentAt = Date.now();
      call.end();
    };
    next();
    call.on('data', (response) => {
      responses += 1;
      requestId = response.request_id || requestId;
      received = seconds(response.total_audio_received) || received;
      if (options.json) process.stdout.write(`${JSON.stringify(response)}\n`);
      for (const result of response.results) {
        if (result.is_final) {
          finals += 1;
          lastFinalAt = Date.now();
        }
        if (!options.json) printer.result(result);
      }
    });
    call.on('error', (error) => {
      clearTimeout(timer);
      error.receivedAudio = responses > 0; // a call that already answered is never retried
      reject(error);
    });
    call.on('end', () => {
      clearTimeout(timer);
      if (printer.open) process.stdout.write('\r\x1b[K');
      const latency = sentAt !== null && lastFinalAt !== null ? Math.max(0, lastFinalAt - sentAt) / 1000 : null;
      resolve({ utterances: finals, audioSeconds: received, requestId, latency });
    });
  });
}

async function transcribe(options) {
  const RecognitionService = loadService();
  const audio = options.stream ? wavSamples(options.file, readAudio(options.file)) : null;
  const deadline = Date.now() + options.timeout * 1000;
  const credentials = options.tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure();
  const client = new RecognitionService(options.target, credentials);
  const metadata = new grpc.Metadata();
  if (options.token) metadata.set('authorization', `Bearer ${options.token}`);
  try {
    for (let retry = 1; ; retry += 1) {
      try {
        if (options.stream) return await streamOnce(client, options, metadata, deadline, audio);
        return await recognizeOnce(client, options, metadata, deadline);
      } catch (error) {
        const delay = typeof error.code === 'number' ? retryDelay(error, retry, options, deadline) : null;
        if (delay === null) throw error;
        process.stderr.write(
          `${endLine()}${statusName(error.code)}: ${error.details}; retrying in ${delay.toFixed(2)} s ` +
            `(retry ${retry} of ${options.maxRetries})\n`,
        );
        await new Promise((resolve) => setTimeout(resolve, delay * 1000));
      }
    }
  } finally {
    client.close();
  }
}

async function main() {
  let options;
  try {
    options = parseCommandLine(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`error: ${error.message}\n${usage()}\n`);
    return 2;
  }
  const started = process.hrtime.bigint();
  try {
    const result = await transcribe(options);
    const total = Number(process.hrtime.bigint() - started) / 1e9;
    let line = `${result.utterances} utterances in ${result.audioSeconds.toFixed(2)} s of audio; ${total.toFixed(3)} s`;
    if (result.latency !== undefined && result.latency !== null) {
      line += `, last final ${result.latency.toFixed(3)} s after the end of the audio`;
    }
    if (result.model) line += `, model ${result.model}`;
    if (result.requestId) line += ` [request_id=${result.requestId}]`;
    process.stderr.write(`${line}\n`);
    return 0;
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`error: ${error.message}\n`);
      return 2;
    }
    if (typeof error.code === 'number' && error.details !== undefined) {
      const details = statusDetails(error);
      let line = `error: ${statusName(error.code)}: ${error.details}`;
      const violations = details.violations.join('; ');
      if (violations && !line.includes(violations)) line += ` [${violations}]`;
      if (details.retryDelay !== null) line += ` (retry after ${details.retryDelay} s)`;
      process.stderr.write(`${line.replace(/\s+/g, ' ').trim()}\n`);
      return EXIT_CODES[error.code] || 8;
    }
    process.stderr.write(`error: ${error.message}\n`);
    return 1;
  }
}

main().then((code) => {
  process.exitCode = code;
});
