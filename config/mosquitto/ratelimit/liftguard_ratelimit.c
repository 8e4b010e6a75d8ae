/* liftguard_ratelimit: a Mosquitto 2.0 plugin giving every client a token bucket of messages.
 *
 * One unit publishing faster than the fleet server can take messages delays every other unit's
 * events, because all of them reach the server over one connection (issue 16, item 3). This plugin
 * stops that at the broker: each client (keyed by its username, i.e. its certificate CN) may publish
 * `rate` messages a second on average and `burst` at once. A message over the limit is still
 * acknowledged, so the client neither stalls nor reconnects, but it is re-addressed to
 * `$liftguard/rate-limited/<username>`, a topic no wildcard subscription matches, so nobody receives
 * it. Usernames listed in `exempt` (the fleet servers) are never limited. A bucket outlives a
 * reconnect: disconnecting does not refill it.
 *
 *   plugin /usr/lib/mosquitto-liftguard/liftguard_ratelimit.so
 *   plugin_opt_rate 20
 *   plugin_opt_burst 200
 *   plugin_opt_exempt fleet,fleet-2,fleet-3
 *
 * Build: cc -shared -fPIC -O2 -o liftguard_ratelimit.so liftguard_ratelimit.c   (needs mosquitto-dev)
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define TABLE_SIZE 16384
#define DIVERT_PREFIX "$liftguard/rate-limited/"

struct bucket {
	struct bucket *next;
	double tokens;
	double last;
	double last_logged;
	uint64_t diverted;
	char name[];
};

static mosquitto_plugin_id_t *plugin_id;
static struct bucket *table[TABLE_SIZE];
static double rate = 20.0;
static double burst = 200.0;
static char *exempt;  /* ",fleet,fleet-2," */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint32_t hash(const char *s)
{
	uint32_t h = 2166136261u;  /* FNV-1a */
	while(*s){
		h ^= (uint8_t)*s++;
		h *= 16777619u;
	}
	return h;
}

static bool is_exempt(const char *name)
{
	char needle[300];
	if(!exempt || strlen(name) > 256) return false;
	snprintf(needle, sizeof(needle), ",%s,", name);
	return strstr(exempt, needle) != NULL;
}

static struct bucket *bucket_for(const char *name, double now)
{
	uint32_t slot = hash(name) % TABLE_SIZE;
	struct bucket *b;
	for(b = table[slot]; b; b = b->next){
		if(!strcmp(b->name, name)) return b;
	}
	b = malloc(sizeof(*b) + strlen(name) + 1);
	if(!b) return NULL;
	strcpy(b->name, name);
	b->tokens = burst;
	b->last = now;
	b->last_logged = 0;
	b->diverted = 0;
	b->next = table[slot];
	table[slot] = b;
	return b;
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	const char *name = mosquitto_client_username(ed->client);
	double now;
	struct bucket *b;
	char *diverted;
	size_t len;
	(void)event;
	(void)userdata;

	if(!name) name = mosquitto_client_id(ed->client);
	if(!name || is_exempt(name)) return MOSQ_ERR_SUCCESS;
	now = now_s();
	b = bucket_for(name, now);
	if(!b) return MOSQ_ERR_SUCCESS;  /* out of memory: let it through rather than drop good data */
	b->tokens += (now - b->last) * rate;
	if(b->tokens > burst) b->tokens = burst;
	b->last = now;
	if(b->tokens >= 1.0){
		b->tokens -= 1.0;
		return MOSQ_ERR_SUCCESS;
	}
	b->diverted++;
	if(now - b->last_logged > 10.0){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "liftguard_ratelimit: %s is over %.0f messages/s; "
				"%llu messages diverted so far", name, rate, (unsigned long long)b->diverted);
		b->last_logged = now;
	}
	len = strlen(DIVERT_PREFIX) + strlen(name) + 1;
	diverted = mosquitto_malloc(len);
	if(!diverted) return MOSQ_ERR_SUCCESS;
	snprintf(diverted, len, "%s%s", DIVERT_PREFIX, name);
	mosquitto_free(ed->topic);
	ed->topic = diverted;
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;
	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *opts, int opt_count)
{
	int i;
	(void)userdata;
	plugin_id = identifier;
	for(i = 0; i < opt_count; i++){
		if(!strcmp(opts[i].key, "rate")){
			rate = atof(opts[i].value);
		}else if(!strcmp(opts[i].key, "burst")){
			burst = atof(opts[i].value);
		}else if(!strcmp(opts[i].key, "exempt")){
			size_t len = strlen(opts[i].value) + 3;
			exempt = malloc(len);
			if(!exempt) return MOSQ_ERR_NOMEM;
			snprintf(exempt, len, ",%s,", opts[i].value);
		}
	}
	if(!(rate > 0) || !(burst >= 1)){
		mosquitto_log_printf(MOSQ_LOG_ERR, "liftguard_ratelimit: rate must be > 0 and burst >= 1");
		return MOSQ_ERR_INVAL;
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "liftguard_ratelimit: %.1f messages/s, burst %.0f, exempt %s",
			rate, burst, exempt ? exempt : "(none)");
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
	int i;
	struct bucket *b, *next;
	(void)userdata;
	(void)opts;
	(void)opt_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	for(i = 0; i < TABLE_SIZE; i++){
		for(b = table[i]; b; b = next){
			next = b->next;
			free(b);
		}
		table[i] = NULL;
	}
	free(exempt);
	exempt = NULL;
	return MOSQ_ERR_SUCCESS;
}
